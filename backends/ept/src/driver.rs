//! The `VmiDriver` implementation: guest memory, rights and views through the
//! introvisor driver surface.

use introvisor::arch::amd64::Amd64;
use introvisor::{Gfn, PageRef, VmiDriver, VmiError, VmiInfo};

use crate::backend::EptBackend;
use crate::hostmem::FramePtr;
use crate::platform::Platform;

/// A handle to one guest frame: copies in and out through the host-memory module, never
/// lending a slice over the live frame.
#[derive(Clone, Debug)]
pub struct EptPage {
    pub(crate) gfn: Gfn,
    pub(crate) frame: FramePtr,
}

impl PageRef for EptPage {
    fn gfn(&self) -> Gfn {
        self.gfn
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
        let offset = usize::try_from(offset)
            .map_err(|_| VmiError::InvalidArgument("range outside the page"))?;
        self.frame.read(offset, buf).map_err(VmiError::from)
    }
}

impl<P: Platform, const VIEWS: usize, const FRAMES: usize, const VCPUS: usize, const QUEUE: usize>
    VmiDriver for EptBackend<P, VIEWS, FRAMES, VCPUS, QUEUE>
{
    type Architecture = Amd64;
    type Page = EptPage;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Err(VmiError::NotSupported("info"))
    }

    fn read_page(&self, gfn: Gfn) -> Result<EptPage, VmiError> {
        Err(VmiError::GfnNotPresent(gfn))
    }
}
