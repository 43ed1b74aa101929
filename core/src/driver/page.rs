//! Page handles: how a driver lends one guest frame to the core.

use crate::addr::Gfn;
use crate::error::VmiError;

/// A driver's handle to one guest frame: cheap to clone, and read by copying out.
///
/// A handle to memory that a running guest can change underneath (a hypervisor's view of
/// guest RAM) must copy through raw pointers and never lend a `&[u8]` over that memory;
/// a handle to a dump or a host buffer may copy from a slice.
pub trait PageRef: Clone {
    /// The frame this handle maps.
    fn gfn(&self) -> Gfn;

    /// Copies `buf.len()` bytes starting at `offset` in the page into `buf`.
    ///
    /// # Errors
    /// [`VmiError::InvalidArgument`] if the range does not lie inside the page.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError>;

    /// Copies the whole page (or as much of it as fits) into `buf`.
    ///
    /// # Errors
    /// As [`PageRef::read`].
    fn read_all(&self, buf: &mut [u8]) -> Result<(), VmiError> {
        self.read(0, buf)
    }
}
