//! Where training runs. The CPU (burn's Flex backend) is always built; GPU backends are
//! cargo features of this crate (`cuda`, `wgpu`) that CI never enables.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// A training device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Wgpu,
}

/// The autodiff device for `kind`, or an error saying how to get it.
pub fn training_device(kind: DeviceKind) -> Result<Device> {
    let device = match kind {
        DeviceKind::Cpu => Device::flex(),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Device::cuda(0),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => Device::wgpu(Default::default()),
        #[allow(unreachable_patterns)]
        other => bail!(
            "this ustad-train was built without {other:?} support: rebuild with `--features {}`",
            format!("{other:?}").to_lowercase()
        ),
    };
    Ok(device.autodiff())
}
