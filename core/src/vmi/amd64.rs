//! What only an AMD64 core offers: the rights check of a translation
//! ([`VmiCore::translate_access`]). Architecture-specific impls on the generic core live
//! in a file named after their architecture.

use super::VmiCore;
use super::translate::CoreReader;
use crate::addr::{Pa, Va};
use crate::arch::Translation;
use crate::arch::amd64::{Access, Amd64, RightsPolicy};
use crate::driver::VmiDriver;
use crate::error::VmiError;

impl<D: VmiDriver<Architecture = Amd64>, const TLB: usize, const PAGES: usize>
    VmiCore<D, TLB, PAGES>
{
    /// Translates `va` as the guest's `access` would, through the translation cache: the
    /// walk, then the rights check of SDM Vol. 3A §4.6 under `rights`.
    ///
    /// A denied access is walked once more without the cache, to name the leaf entry in
    /// the error; [`Paging::fault_error_code`](crate::arch::amd64::Paging::fault_error_code)
    /// gives the #PF error code of any failure.
    ///
    /// # Errors
    /// As [`VmiCore::translate`]; [`VmiError::Translation`] with
    /// [`FaultReason::AccessDenied`](crate::FaultReason::AccessDenied) when the rights
    /// forbid the access.
    pub fn translate_access(
        &self,
        va: Va,
        root: Pa,
        access: Access,
        rights: RightsPolicy,
    ) -> Result<Translation, VmiError> {
        let translation = self.translate(va, root)?;
        if self
            .paging
            .check_access(&translation, access, rights)
            .is_ok()
        {
            return Ok(translation);
        }
        Amd64::translate_access(&CoreReader(self), &self.paging, va, root, access, rights)
    }
}
