//! A bound on the memory one template render may hold.
//!
//! minijinja's fuel ([`crate::RENDER_FUEL`]) bounds instructions, not bytes:
//! `{% set ns.s = ns.s ~ ns.s %}` doubles a string in one instruction, so forty of them ask
//! for a terabyte, and a `join` or `replace` filter builds its whole result inside one
//! instruction. minijinja has no hook that could stop such a render with an error, so the
//! bound is kept where every byte passes: the allocator. A binary whose global allocator is
//! a [`RenderBudget`] ends with exit status 1, and a message naming the template, as soon as
//! one render would hold more than [`RENDER_MEMORY`] bytes more than when it started. The
//! `temper` CLI installs it; a program using this crate may. Without it, renders are bounded
//! by fuel alone.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, RefCell};
use std::io::Write;

/// The most memory one render may take: far above any real conversation's needs.
pub const RENDER_MEMORY: usize = 1 << 30;

thread_local! {
    /// Bytes this thread has allocated, net of what it freed, since its render began; `None`
    /// outside renders.
    static HELD: Cell<Option<isize>> = const { Cell::new(None) };
    /// The name of the template this thread renders.
    static TEMPLATE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Marks the current thread as rendering `template` until dropped.
pub(crate) struct Rendering(());

impl Rendering {
    pub(crate) fn start(template: &str) -> Rendering {
        TEMPLATE.with_borrow_mut(|name| {
            name.clear();
            name.push_str(template);
        });
        HELD.set(Some(0));
        Rendering(())
    }
}

impl Drop for Rendering {
    fn drop(&mut self) {
        HELD.set(None);
    }
}

/// A global allocator that forwards to `A` and keeps [`RENDER_MEMORY`] for each render.
#[derive(Debug, Default)]
pub struct RenderBudget<A>(pub A);

/// Counts `bytes` against the current render, if any; ends the process past the budget.
fn track(bytes: isize) {
    let over = HELD
        .try_with(|held| match held.get() {
            Some(total) => {
                let total = total.saturating_add(bytes);
                held.set(Some(total));
                total > RENDER_MEMORY as isize
            }
            None => false,
        })
        .unwrap_or(false);
    if over {
        HELD.set(None);
        TEMPLATE.with_borrow(|name| {
            let _ = writeln!(
                std::io::stderr(),
                "error: chat template {name}: one render took more than {} MiB of memory; the template builds text without bound",
                RENDER_MEMORY >> 20
            );
        });
        std::process::exit(1);
    }
}

fn size(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

// SAFETY: every method forwards to `A` with the caller's arguments unchanged, so `A`'s
// guarantees hold; the bookkeeping before it touches only thread-local integers, and when it
// ends the process it does so before `A` is asked for anything.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for RenderBudget<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(size(layout.size()));
        // SAFETY: forwarded unchanged (see above).
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(size(layout.size()));
        // SAFETY: forwarded unchanged.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-size(layout.size()));
        // SAFETY: forwarded unchanged.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(size(new_size).saturating_sub(size(layout.size())));
        // SAFETY: forwarded unchanged.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}
