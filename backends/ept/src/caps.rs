//! [`EptCapabilities`]: the EPT features of the CPU, from the `IA32_VMX_EPT_VPID_CAP`
//! MSR (index 0x48C), decoded as SDM Vol. 3D Appendix A.10 lays it out.
//!
//! They are an input: the hypervisor reads the MSR and passes its value to
//! [`EptBackend::new`](crate::EptBackend::new). The backend refuses what the CPU lacks
//! (a 5-level walk, execute-only entries, large pages it cannot map) and works around
//! what it can (a missing single-context INVEPT becomes an all-context one).

bitflags::bitflags! {
    /// The bits of `IA32_VMX_EPT_VPID_CAP` (SDM Vol. 3D Appendix A.10). Unknown bits are
    /// kept (`from_bits_retain`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct EptCapabilities: u64 {
        /// Bit 0: EPT entries may be execute-only (X without R).
        const EXECUTE_ONLY = 1 << 0;
        /// Bit 6: a page-walk length of 4 is supported.
        const WALK_LENGTH_4 = 1 << 6;
        /// Bit 7: a page-walk length of 5 is supported.
        const WALK_LENGTH_5 = 1 << 7;
        /// Bit 8: the EPT paging structures may be uncacheable (EPTP memory type 0).
        const MEMORY_TYPE_UC = 1 << 8;
        /// Bit 14: the EPT paging structures may be write-back (EPTP memory type 6).
        const MEMORY_TYPE_WB = 1 << 14;
        /// Bit 16: EPT PDEs may map 2 MiB pages.
        const PAGE_2M = 1 << 16;
        /// Bit 17: EPT PDPTEs may map 1 GiB pages.
        const PAGE_1G = 1 << 17;
        /// Bit 20: the INVEPT instruction is supported.
        const INVEPT = 1 << 20;
        /// Bit 21: accessed and dirty flags for EPT are supported.
        const ACCESSED_DIRTY = 1 << 21;
        /// Bit 22: EPT violations report advanced VM-exit information (qualification bits
        /// 9 to 11).
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Bit 23: supervisor shadow-stack control is supported.
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        /// Bit 25: single-context INVEPT is supported.
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// Bit 26: all-context INVEPT is supported.
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// Bit 32: the INVVPID instruction is supported.
        const INVVPID = 1 << 32;
        /// Bit 40: individual-address INVVPID is supported.
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Bit 41: single-context INVVPID is supported.
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// Bit 42: all-context INVVPID is supported.
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Bit 43: single-context-retaining-globals INVVPID is supported.
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for EptCapabilities {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "EptCapabilities({=u64:#x})", self.bits())
    }
}

impl EptCapabilities {
    /// The capabilities from the raw MSR value, every bit kept.
    pub const fn from_msr(raw: u64) -> Self {
        Self::from_bits_retain(raw)
    }

    /// What a Skylake-class server reports: execute-only, 4-level walks, UC and WB
    /// structures, 2 MiB and 1 GiB pages, INVEPT of both types, A/D flags (but no
    /// 5-level walk). Handy for tests.
    pub const fn typical() -> Self {
        Self::from_bits_retain(
            Self::EXECUTE_ONLY.bits()
                | Self::WALK_LENGTH_4.bits()
                | Self::MEMORY_TYPE_UC.bits()
                | Self::MEMORY_TYPE_WB.bits()
                | Self::PAGE_2M.bits()
                | Self::PAGE_1G.bits()
                | Self::INVEPT.bits()
                | Self::ACCESSED_DIRTY.bits()
                | Self::INVEPT_SINGLE_CONTEXT.bits()
                | Self::INVEPT_ALL_CONTEXT.bits(),
        )
    }

    /// Whether execute-only entries are allowed.
    pub const fn execute_only(self) -> bool {
        self.contains(Self::EXECUTE_ONLY)
    }

    /// Whether a walk of `levels` (4 or 5) is supported.
    pub const fn walk_length(self, levels: u8) -> bool {
        match levels {
            4 => self.contains(Self::WALK_LENGTH_4),
            5 => self.contains(Self::WALK_LENGTH_5),
            _ => false,
        }
    }

    /// Whether a leaf at `level` may exist: level 1 (4 KiB) always, level 2 (2 MiB) with
    /// bit 16, level 3 (1 GiB) with bit 17, no other.
    pub const fn leaf_at(self, level: u8) -> bool {
        match level {
            1 => true,
            2 => self.contains(Self::PAGE_2M),
            3 => self.contains(Self::PAGE_1G),
            _ => false,
        }
    }

    /// Whether single-context INVEPT can be used (INVEPT and its type 1 both reported).
    pub const fn invept_single_context(self) -> bool {
        self.contains(Self::INVEPT) && self.contains(Self::INVEPT_SINGLE_CONTEXT)
    }

    /// Whether all-context INVEPT can be used.
    pub const fn invept_all_context(self) -> bool {
        self.contains(Self::INVEPT) && self.contains(Self::INVEPT_ALL_CONTEXT)
    }
}
