//! Prepared examples and rows as flat arrays: built in memory while a dataset is prepared,
//! memory-mapped from the prepared-data cache by later runs.
//!
//! ```text
//! examples   ids     [A A A A A B B B C C ...]      one array for every token
//!            mask    [0 0 1 1 1 0 1 1 0 1 ...]      1 = trained
//!            offsets [0 5 8 10 ...]                 example k is offsets[k]..offsets[k + 1]
//! rows       members [0 2 | 3 1 | ...]              the examples of each row, in row order
//!            offsets [0 2 4 ...]
//! ```

use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use bytemuck::Pod;

use crate::example::Example;
use crate::pack::Pack;

/// An array held in memory or memory-mapped from a file of the cache.
#[derive(Debug, Clone)]
pub(crate) enum Buffer<T> {
    Owned(Vec<T>),
    /// A whole file, checked on opening to hold a whole number of aligned `T`s.
    Mapped(Arc<memmap2::Mmap>),
}

impl<T: Pod> Buffer<T> {
    /// Maps `path`; `None` when its length is not a whole number of `T`s.
    pub(crate) fn map(path: &Path) -> std::io::Result<Option<Buffer<T>>> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Some(Buffer::Owned(Vec::new())));
        }
        // SAFETY: the cache's files are written once, into a directory that is renamed into
        // place when complete, and never modified afterwards; only a user editing the cache
        // by hand while a run reads it could change the bytes under the map.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(bytemuck::try_cast_slice::<u8, T>(&map)
            .is_ok()
            .then(|| Buffer::Mapped(Arc::new(map))))
    }

    fn push(&mut self, value: T) {
        self.to_mut().push(value);
    }

    fn to_mut(&mut self) -> &mut Vec<T> {
        if let Buffer::Mapped(map) = self {
            *self = Buffer::Owned(bytemuck::cast_slice(map).to_vec());
        }
        match self {
            Buffer::Owned(values) => values,
            Buffer::Mapped(_) => unreachable!("made owned above"),
        }
    }
}

impl<T: Pod> Deref for Buffer<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Buffer::Owned(values) => values,
            // Checked in `map`: whole and aligned (a map starts on a page).
            Buffer::Mapped(map) => bytemuck::cast_slice(map),
        }
    }
}

/// Tokenized examples, one after another in flat arrays.
#[derive(Debug, Clone)]
pub struct Examples {
    pub(crate) ids: Buffer<u32>,
    /// 1 where the token is trained.
    pub(crate) mask: Buffer<u8>,
    /// `len + 1` starts: example `k` is `offsets[k]..offsets[k + 1]`.
    pub(crate) offsets: Buffer<u64>,
    /// Line (or row) of each example's record in its file.
    pub(crate) lines: Buffer<u64>,
}

/// One example of [`Examples`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExampleRef<'a> {
    pub input_ids: &'a [u32],
    /// 1 where the token is trained.
    pub loss_mask: &'a [u8],
    pub line: usize,
}

impl ExampleRef<'_> {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m != 0).count()
    }

    pub fn to_example(&self) -> Example {
        Example {
            input_ids: self.input_ids.to_vec(),
            loss_mask: self.loss_mask.iter().map(|&m| m != 0).collect(),
            line: self.line,
        }
    }
}

impl Default for Examples {
    fn default() -> Self {
        Examples {
            ids: Buffer::Owned(Vec::new()),
            mask: Buffer::Owned(Vec::new()),
            offsets: Buffer::Owned(vec![0]),
            lines: Buffer::Owned(Vec::new()),
        }
    }
}

impl Examples {
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn span(&self, index: usize) -> Range<usize> {
        self.offsets[index] as usize..self.offsets[index + 1] as usize
    }

    /// Example `index` (panics when out of range, like slice indexing).
    pub fn get(&self, index: usize) -> ExampleRef<'_> {
        let span = self.span(index);
        ExampleRef {
            input_ids: &self.ids[span.clone()],
            loss_mask: &self.mask[span],
            line: self.lines[index] as usize,
        }
    }

    /// The length of example `index`, in tokens.
    pub fn len_of(&self, index: usize) -> usize {
        self.span(index).len()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = ExampleRef<'_>> {
        (0..self.len()).map(|index| self.get(index))
    }

    /// Room for `tokens` more tokens without moving the arrays (memory is only touched when
    /// it is written, so a generous guess costs address space, not memory).
    pub fn reserve_tokens(&mut self, tokens: usize) {
        self.ids.to_mut().reserve(tokens);
        self.mask.to_mut().reserve(tokens);
    }

    pub fn push(&mut self, example: &Example) {
        self.ids.to_mut().extend_from_slice(&example.input_ids);
        self.mask
            .to_mut()
            .extend(example.loss_mask.iter().map(|&m| u8::from(m)));
        self.end_example(example.line);
    }

    pub fn push_ref(&mut self, example: ExampleRef<'_>) {
        self.ids.to_mut().extend_from_slice(example.input_ids);
        self.mask.to_mut().extend_from_slice(example.loss_mask);
        self.end_example(example.line);
    }

    fn end_example(&mut self, line: usize) {
        let end = self.ids.len() as u64;
        self.offsets.push(end);
        self.lines.push(line as u64);
    }

    /// Every token of every example.
    pub fn total_tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn trained_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0).count()
    }

    /// Whether the arrays agree with each other (a cache read back is checked with this).
    pub(crate) fn is_consistent(&self) -> bool {
        self.ids.len() == self.mask.len()
            && self.offsets.len() == self.lines.len() + 1
            && self.offsets.first() == Some(&0)
            && self.offsets.last() == Some(&(self.ids.len() as u64))
            && self.offsets.windows(2).all(|w| w[0] <= w[1])
    }
}

/// The rows to train on: each a list of example indices (several when packed, one when
/// padded).
#[derive(Debug, Clone)]
pub struct Rows {
    pub(crate) members: Buffer<u32>,
    /// `len + 1` starts: row `k` is `members[offsets[k]..offsets[k + 1]]`.
    pub(crate) offsets: Buffer<u64>,
}

impl Rows {
    /// Rows holding the given examples each.
    pub fn from_members(rows: impl IntoIterator<Item = impl AsRef<[usize]>>) -> Rows {
        let (mut members, mut offsets) = (Vec::new(), vec![0]);
        for row in rows {
            members.extend(row.as_ref().iter().map(|&index| index as u32));
            offsets.push(members.len() as u64);
        }
        Rows {
            members: Buffer::Owned(members),
            offsets: Buffer::Owned(offsets),
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples of row `index`, in row order.
    pub fn members(&self, index: usize) -> &[u32] {
        &self.members[self.offsets[index] as usize..self.offsets[index + 1] as usize]
    }

    /// Row `index` of `examples` as one sequence with restarting positions.
    pub fn row(&self, index: usize, examples: &Examples) -> Pack {
        let mut pack = Pack::empty();
        for &member in self.members(index) {
            pack.push(examples.get(member as usize), member as usize);
        }
        pack
    }

    /// The length of row `index`, in tokens.
    pub fn len_of(&self, index: usize, examples: &Examples) -> usize {
        self.members(index)
            .iter()
            .map(|&member| examples.len_of(member as usize))
            .sum()
    }

    /// Whether every row is well formed and names an example of `examples` (checked on a
    /// cache read back).
    pub(crate) fn is_consistent(&self, examples: &Examples) -> bool {
        !self.offsets.is_empty()
            && self.offsets.first() == Some(&0)
            && self.offsets.last() == Some(&(self.members.len() as u64))
            && self.offsets.windows(2).all(|w| w[0] <= w[1])
            && self.members.iter().all(|&m| (m as usize) < examples.len())
    }
}
