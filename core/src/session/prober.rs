//! [`VmiProber`] and its fault set [`PageFaults`]: reads that may hit paged-out memory
//! record their page faults instead of failing (see the [session module](super)).

use core::marker::PhantomData;

use crate::access::AddressContext;
use crate::addr::Pa;
use crate::arch::Architecture;
use crate::error::{FaultReason, PageFault, VmiError};

/// A fixed-capacity set of page faults, each an [`AddressContext`]: the page's first
/// address and the root it was translated under. Insertion order is kept (removal swaps
/// the last entry into the hole).
///
/// `N` must be a power of two greater than 1 (the hash index demands it; another value
/// fails to compile). Every operation is O(1) on average and O(N) at worst; nothing
/// allocates. A full set hands the fault back and counts it as dropped.
#[derive(Clone, Debug, Default)]
pub struct PageFaults<const N: usize> {
    set: heapless::FnvIndexSet<AddressContext, N>,
    dropped: usize,
}

impl<const N: usize> PageFaults<N> {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            set: heapless::FnvIndexSet::new(),
            dropped: 0,
        }
    }

    /// Adds `fault`; `Ok(true)` if it was new, `Ok(false)` if it was there already.
    ///
    /// # Errors
    /// The fault itself, handed back, when the set is full (it is counted in
    /// [`PageFaults::dropped`]).
    pub fn insert(&mut self, fault: AddressContext) -> Result<bool, AddressContext> {
        let result = self.set.insert(fault);
        if result.is_err() {
            self.dropped = self.dropped.saturating_add(1);
        }
        result
    }

    /// Whether `fault` is in the set.
    pub fn contains(&self, fault: &AddressContext) -> bool {
        self.set.contains(fault)
    }

    /// Removes `fault`; whether it was there.
    pub fn remove(&mut self, fault: &AddressContext) -> bool {
        self.set.remove(fault)
    }

    /// The faults, in insertion order (until a removal).
    pub fn iter(&self) -> impl Iterator<Item = &AddressContext> + '_ {
        self.set.iter()
    }

    /// The first fault.
    pub fn first(&self) -> Option<&AddressContext> {
        self.set.first()
    }

    /// The number of faults.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Whether no other fault fits.
    pub fn is_full(&self) -> bool {
        self.set.len() >= N
    }

    /// The capacity, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// How many faults did not fit since the set was made or last cleared.
    pub const fn dropped(&self) -> usize {
        self.dropped
    }

    /// Removes every fault and resets the dropped count.
    pub fn clear(&mut self) {
        self.set.clear();
        self.dropped = 0;
    }
}

/// How a [`VmiProber`] filed a page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Probed {
    /// A fault the guest can serve: recorded (or recorded already) in the prober's faults.
    Recorded,
    /// The fault is in the suppressed set: ignored.
    Suppressed,
    /// A fault no #PF can fix (non-canonical address, reserved bit, table outside guest
    /// memory): added to the suppressed set.
    Unservable,
    /// The set it belongs in is full: counted as dropped there.
    Dropped,
}

/// Runs reads that may hit paged-out memory, recording their page faults instead of
/// failing.
///
/// A fault is recorded by page (the faulting address rounded down to the page, and the
/// root), so many reads of one missing page record it once. For a read that spans pages
/// only the first missing page is known; the next one shows on the retry.
///
/// ```
/// use introvisor::{AddressContext, FaultReason, PageFault, PageFaults, Pa, Va, VmiError, VmiProber};
/// use introvisor::arch::amd64::Amd64;
///
/// let mut suppressed = PageFaults::<16>::new();
/// let mut prober = VmiProber::<Amd64, 16>::new(&mut suppressed);
/// let missing = PageFault {
///     va: Va(0x7000_0123), root: Pa(0x1000), level: 1, entry: Pa(0x5000), value: 0,
///     reason: FaultReason::NotPresent,
/// };
/// // A read that hit the missing page yields None, and the page is remembered.
/// assert_eq!(prober.check(Err::<u64, _>(VmiError::Translation(missing)))?, None);
/// assert_eq!(prober.check(Ok::<u64, VmiError>(7))?, Some(7));
/// assert_eq!(
///     prober.faults().first(),
///     Some(&AddressContext::new(Va(0x7000_0000), Pa(0x1000)))
/// );
/// # Ok::<(), VmiError>(())
/// ```
pub struct VmiProber<'s, A: Architecture, const N: usize> {
    faults: PageFaults<N>,
    suppressed: &'s mut PageFaults<N>,
    arch: PhantomData<fn() -> A>,
}

impl<'s, A: Architecture, const N: usize> VmiProber<'s, A, N> {
    /// A prober with no faults yet, which ignores the faults in `suppressed` and adds to
    /// it the faults no #PF can fix.
    pub fn new(suppressed: &'s mut PageFaults<N>) -> Self {
        Self {
            faults: PageFaults::new(),
            suppressed,
            arch: PhantomData,
        }
    }

    /// Passes `Ok` on as `Some`, turns a failed translation into `None` after filing its
    /// fault, and passes any other error on.
    ///
    /// # Errors
    /// Any error of `result` but [`VmiError::Translation`].
    pub fn check<T>(&mut self, result: Result<T, VmiError>) -> Result<Option<T>, VmiError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(VmiError::Translation(fault)) => {
                self.file(&fault);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `read` and [`check`](VmiProber::check)s its result.
    ///
    /// # Errors
    /// As [`VmiProber::check`].
    pub fn probe<T>(
        &mut self,
        read: impl FnOnce() -> Result<T, VmiError>,
    ) -> Result<Option<T>, VmiError> {
        let result = read();
        self.check(result)
    }

    /// Files one page fault: recorded if the guest can serve it, suppressed if it never
    /// can, ignored if suppressed already.
    pub fn file(&mut self, fault: &PageFault) -> Probed {
        let page = AddressContext::new(A::va_align_down(fault.va), fault.root);
        if self.suppressed.contains(&page) {
            return Probed::Suppressed;
        }
        let servable = matches!(fault.reason, FaultReason::NotPresent);
        let set = if servable {
            &mut self.faults
        } else {
            &mut *self.suppressed
        };
        match set.insert(page) {
            Err(_) => Probed::Dropped,
            Ok(_) if servable => Probed::Recorded,
            Ok(_) => Probed::Unservable,
        }
    }

    /// The faults recorded so far.
    pub fn faults(&self) -> &PageFaults<N> {
        &self.faults
    }

    /// The suppressed set.
    pub fn suppressed(&self) -> &PageFaults<N> {
        self.suppressed
    }

    /// Ends probing, with the faults recorded.
    pub fn into_faults(self) -> PageFaults<N> {
        self.faults
    }

    /// `Ok` if no fault was recorded (or dropped), else the first recorded fault as a
    /// translation error: for a handler that wants all or nothing.
    ///
    /// # Errors
    /// [`VmiError::Translation`] naming the first recorded page, with reason
    /// [`FaultReason::NotPresent`]; [`VmiError::CapacityExceeded`] if faults were only
    /// dropped.
    pub fn error_for_page_faults(&self) -> Result<(), VmiError> {
        if let Some(first) = self.faults.first() {
            return Err(VmiError::Translation(PageFault {
                va: first.va,
                root: first.root,
                level: 0,
                entry: Pa(0),
                value: 0,
                reason: FaultReason::NotPresent,
            }));
        }
        if self.faults.dropped() > 0 {
            return Err(VmiError::CapacityExceeded);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Va;
    use crate::arch::amd64::Amd64;

    fn fault(va: u64, root: u64, reason: FaultReason) -> PageFault {
        PageFault {
            va: Va(va),
            root: Pa(root),
            level: 1,
            entry: Pa(0),
            value: 0,
            reason,
        }
    }

    #[test]
    fn faults_are_deduplicated_by_page_and_root() {
        let mut suppressed = PageFaults::<4>::new();
        let mut prober = VmiProber::<Amd64, 4>::new(&mut suppressed);
        assert_eq!(
            prober.file(&fault(0x1001, 0x9000, FaultReason::NotPresent)),
            Probed::Recorded
        );
        assert_eq!(
            prober.file(&fault(0x1fff, 0x9000, FaultReason::NotPresent)),
            Probed::Recorded
        );
        assert_eq!(
            prober.file(&fault(0x1000, 0xa000, FaultReason::NotPresent)),
            Probed::Recorded
        );
        assert_eq!(prober.faults().len(), 2);
        let pages: std::vec::Vec<_> = prober.faults().iter().copied().collect();
        assert_eq!(
            pages,
            [
                AddressContext::new(Va(0x1000), Pa(0x9000)),
                AddressContext::new(Va(0x1000), Pa(0xa000))
            ]
        );
        assert!(prober.suppressed().is_empty());
    }

    #[test]
    fn unservable_faults_are_suppressed_and_suppressed_ones_ignored() {
        let mut suppressed = PageFaults::<4>::new();
        suppressed
            .insert(AddressContext::new(Va(0x5000), Pa(0x9000)))
            .unwrap();
        let mut prober = VmiProber::<Amd64, 4>::new(&mut suppressed);
        assert_eq!(
            prober.file(&fault(0x5008, 0x9000, FaultReason::NotPresent)),
            Probed::Suppressed
        );
        assert_eq!(
            prober.file(&fault(0x8000_0000_0000, 0x9000, FaultReason::NonCanonical)),
            Probed::Unservable
        );
        assert_eq!(
            prober.file(&fault(0x6000, 0x9000, FaultReason::ReservedBit)),
            Probed::Unservable
        );
        assert_eq!(
            prober.file(&fault(0x6000, 0x9000, FaultReason::ReservedBit)),
            Probed::Suppressed
        );
        assert!(prober.faults().is_empty());
        assert_eq!(prober.error_for_page_faults(), Ok(()));
        drop(prober);
        assert_eq!(suppressed.len(), 3);
    }

    #[test]
    fn a_full_set_hands_the_fault_back_and_counts_it() {
        let mut set = PageFaults::<2>::new();
        assert_eq!(set.insert(AddressContext::new(Va(0), Pa(0))), Ok(true));
        assert_eq!(set.insert(AddressContext::new(Va(0), Pa(0))), Ok(false));
        assert_eq!(set.insert(AddressContext::new(Va(0x1000), Pa(0))), Ok(true));
        assert!(set.is_full());
        let third = AddressContext::new(Va(0x2000), Pa(0));
        assert_eq!(set.insert(third), Err(third));
        assert_eq!(set.dropped(), 1);
        assert_eq!(set.len(), 2);
        assert!(set.remove(&AddressContext::new(Va(0), Pa(0))));
        assert!(!set.contains(&AddressContext::new(Va(0), Pa(0))));
        set.clear();
        assert!(set.is_empty());
        assert_eq!(set.dropped(), 0);

        let mut suppressed = PageFaults::<2>::new();
        let mut prober = VmiProber::<Amd64, 2>::new(&mut suppressed);
        for page in 0..3u64 {
            prober.file(&fault(page << 12, 0, FaultReason::NotPresent));
        }
        assert_eq!(prober.faults().len(), 2);
        assert_eq!(prober.faults().dropped(), 1);
        assert!(matches!(
            prober.error_for_page_faults(),
            Err(VmiError::Translation(PageFault { va: Va(0), .. }))
        ));
    }

    #[test]
    fn other_errors_pass_through_the_prober() {
        let mut suppressed = PageFaults::<2>::new();
        let mut prober = VmiProber::<Amd64, 2>::new(&mut suppressed);
        assert_eq!(
            prober.probe(|| Err::<u8, _>(VmiError::OutOfBounds(Pa(1)))),
            Err(VmiError::OutOfBounds(Pa(1)))
        );
        assert_eq!(prober.probe(|| Ok::<u8, VmiError>(3)), Ok(Some(3)));
        assert!(prober.faults().is_empty());
    }
}
