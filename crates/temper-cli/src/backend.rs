//! `--device`: which of the backends compiled into this binary runs a command.
//!
//! Every command is written once, generic over burn's `Backend`; [`on_device`] picks the
//! concrete backend from the flag. Backends are cargo features of this crate (`flex`, the
//! default, `ndarray`, `wgpu`, `cuda`); asking for one that was not compiled in is an error that
//! says how to build it.

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;

/// The help text of every `--device` flag.
pub const DEVICE_HELP: &str = "Where to run: `cpu` (burn-flex, the default), `ndarray`, `wgpu` or `wgpu:N` (the Nth discrete GPU), `cuda` or `cuda:N`; the ones compiled in are listed by `temper --version`";

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// burn-flex on the CPU (feature `flex`).
    Cpu,
    /// burn's ndarray backend on the CPU (feature `ndarray`).
    Ndarray,
    /// wgpu's default adapter, or the Nth discrete GPU (feature `wgpu`).
    Wgpu(Option<usize>),
    /// The Nth CUDA device (feature `cuda`).
    Cuda(usize),
}

impl Device {
    /// Parses `cpu`, `ndarray`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N` (clap's value parser of
    /// every `--device`, so a bad flag fails before anything is loaded).
    pub fn parse(flag: &str) -> Result<Self> {
        let (name, index) = match flag.split_once(':') {
            Some((name, index)) => match index.parse::<usize>() {
                Ok(index) => (name, Some(index)),
                Err(_) => bail!("--device {flag}: `{index}` is not a device index (0, 1, ...)"),
            },
            None => (flag, None),
        };
        Ok(match (name, index) {
            ("cpu", None) => Self::Cpu,
            ("ndarray", None) => Self::Ndarray,
            ("wgpu", index) => Self::Wgpu(index),
            ("cuda", index) => Self::Cuda(index.unwrap_or(0)),
            ("cpu" | "ndarray", Some(_)) => bail!("--device {flag}: `{name}` takes no index"),
            _ => bail!(
                "--device {flag}: unknown device; expected cpu, ndarray, wgpu[:N] or cuda[:N]"
            ),
        })
    }

    /// The cargo feature that compiles this device's backend in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Cpu => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu(_) => "wgpu",
            Self::Cuda(_) => "cuda",
        }
    }
}

impl std::fmt::Display for Device {
    /// As the flag names it: `cpu`, `wgpu:1`, `cuda:0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Ndarray => write!(f, "ndarray"),
            Self::Wgpu(None) => write!(f, "wgpu"),
            Self::Wgpu(Some(index)) => write!(f, "wgpu:{index}"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// The backends compiled into this binary, as `--device` names them.
pub fn compiled_in() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("cpu");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// A command that runs on whichever backend `--device` picks.
pub trait OnDevice {
    type Output;
    /// Runs on backend `B`; `name` is the device as the user gave it, for messages.
    fn run<B: Backend>(self, device: &B::Device, name: &str) -> Result<Self::Output>;

    /// Runs on several devices of backend `B` (`--device cuda:0,cuda:1`); commands of one
    /// device run on the first.
    fn run_on<B: Backend>(self, devices: &[B::Device], name: &str) -> Result<Self::Output>
    where
        Self: Sized,
    {
        self.run::<B>(&devices[0], name)
    }
}

/// Runs `job` on `device`'s backend.
pub fn on_device<J: OnDevice>(device: Device, job: J) -> Result<J::Output> {
    on_devices(&[device], job)
}

/// Runs `job` on `devices`, which must be of one backend (`cpu`, or `cuda:0,cuda:1`).
pub fn on_devices<J: OnDevice>(devices: &[Device], job: J) -> Result<J::Output> {
    let Some(&first) = devices.first() else {
        bail!("--device: no device given");
    };
    let flag = &devices
        .iter()
        .map(Device::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if devices.iter().any(|d| d.feature() != first.feature()) {
        bail!("--device {flag}: every device must be of one backend");
    }
    match first {
        #[cfg(feature = "flex")]
        Device::Cpu => {
            job.run_on::<burn::backend::Flex>(&vec![Default::default(); devices.len()], flag)
        }
        #[cfg(feature = "ndarray")]
        Device::Ndarray => {
            job.run_on::<burn::backend::NdArray>(&vec![Default::default(); devices.len()], flag)
        }
        #[cfg(feature = "wgpu")]
        Device::Wgpu(_) => {
            use burn::backend::wgpu::WgpuDevice;
            let wgpu: Vec<WgpuDevice> = devices
                .iter()
                .map(|device| match device {
                    Device::Wgpu(Some(index)) => WgpuDevice::DiscreteGpu(*index),
                    _ => WgpuDevice::DefaultDevice,
                })
                .collect();
            job.run_on::<burn::backend::Wgpu>(&wgpu, flag)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let cuda: Vec<_> = devices
                .iter()
                .filter_map(|device| match device {
                    Device::Cuda(index) => Some(burn::backend::cuda::CudaDevice::new(*index)),
                    _ => None,
                })
                .collect();
            job.run_on::<burn::backend::Cuda>(&cuda, flag)
        }
        #[allow(unreachable_patterns)]
        other => bail!(
            "--device {flag}: this temper was built without the `{feature}` backend (it has: {have}); \
             rebuild with `cargo build --release -p temper-cli --features {feature}`",
            feature = other.feature(),
            have = compiled_in().join(", "),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_ones_say_what_was_expected() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("wgpu").unwrap(), Device::Wgpu(None));
        assert_eq!(Device::parse("wgpu:1").unwrap(), Device::Wgpu(Some(1)));
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:3").unwrap(), Device::Cuda(3));
        let error = Device::parse("tpu").unwrap_err().to_string();
        assert!(
            error.contains("expected cpu, ndarray, wgpu[:N] or cuda[:N]"),
            "{error}"
        );
        let error = Device::parse("cuda:x").unwrap_err().to_string();
        assert!(error.contains("`x` is not a device index"), "{error}");
        let error = Device::parse("cpu:1").unwrap_err().to_string();
        assert!(error.contains("takes no index"), "{error}");
    }

    struct Name;
    impl OnDevice for Name {
        type Output = String;
        fn run<B: Backend>(self, _: &B::Device, _: &str) -> Result<String> {
            Ok(B::name(&Default::default()))
        }
    }

    #[test]
    fn a_backend_not_compiled_in_is_a_clear_error() {
        for flag in ["cpu", "ndarray", "wgpu", "cuda:1"] {
            let device = Device::parse(flag).unwrap();
            let compiled = compiled_in().contains(&flag.split(':').next().unwrap());
            if compiled {
                continue;
            }
            let error = on_device(device, Name).unwrap_err().to_string();
            assert!(
                error.contains(&format!("--features {}", device.feature())),
                "{error}"
            );
        }
        #[cfg(feature = "flex")]
        assert!(on_device(Device::Cpu, Name).unwrap().contains("flex"));
    }
}
