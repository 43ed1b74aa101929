//! introvisor-ept's decoders of what the CPU reports and its encoders of what it writes,
//! over arbitrary words: a VM exit (`Exit::decode` over every field of `ExitInfo`), the
//! CR-access, I/O and debug qualifications, interruption information, EPT-violation
//! qualifications, memory types, EPT entries (`EptEntry::try_leaf`) and EPT pointers
//! (`EptPointer::try_new`) under arbitrary capabilities.
//!
//! Every input decodes to `Ok` or a named `EptError` (whose text is not empty), never a
//! panic, and:
//! - a VM-entry failure (reason bit 31) is `EntryFailure`; a basic reason above
//!   `MAX_EXIT_REASON` is `UnknownExitReason`; `Other(r)` is a reason the decoder has no
//!   variant for;
//! - what a decoder extracts re-encodes (SDM Vol. 3C 28.2.1, Tables 28-3 and 28-5; 25.9.2,
//!   Table 25-19) to the bits it was decoded from, and decodes again to the same value;
//! - an exception's vector, type and error code are the interruption information's, the
//!   instruction length is 1..=15 exactly for software events;
//! - an EPT violation's guest-linear address is there exactly when bit 7 says so;
//! - an entry or pointer the encoders accept reads back (address, rights, levels, memory
//!   type, large-page bit) as it was built, and obeys the rules they check (W needs R,
//!   the frame is aligned to the level's size, the walk length is supported).
#![no_main]

#[path = "common/mod.rs"]
mod common;

use common::Input;
use introvisor::MemoryAccess;
use introvisor_ept::exit::{
    CrAccess, CrAccessType, DebugQualification, EXIT_REASON_ENTRY_FAILURE, EptViolation,
    InterruptionInfo, IoAccess, MAX_EXIT_REASON, reason,
};
use introvisor_ept::platform::Hpa;
use introvisor_ept::{
    EptCapabilities, EptEntry, EptError, EptFlags, EptPointer, Exit, ExitInfo, MemoryType,
};
use libfuzzer_sys::fuzz_target;

fn named(e: EptError) {
    assert!(!e.to_string().is_empty(), "{e:?} prints as nothing");
}

fn cr_access(q: u64) {
    match CrAccess::decode(q) {
        Ok(cr) => {
            let access = match cr.access {
                CrAccessType::MovToCr => 0,
                CrAccessType::MovFromCr => 1,
                CrAccessType::Clts => 2,
                CrAccessType::Lmsw => 3,
            };
            let encoded = u64::from(cr.cr)
                | access << 4
                | u64::from(cr.lmsw_memory) << 6
                | u64::from(cr.gpr) << 8
                | u64::from(cr.lmsw_source) << 16;
            assert_eq!(encoded, q & 0xffff_0f7f, "CR access {cr:?} from {q:#x}");
            assert_eq!(CrAccess::decode(encoded), Ok(cr));
            assert_eq!(cr.register().is_none(), cr.cr == 8);
        }
        Err(e) => {
            assert!(!matches!(q & 0xf, 0 | 3 | 4 | 8));
            named(e);
        }
    }
}

fn io_access(q: u64) {
    match IoAccess::decode(q) {
        Ok(io) => {
            let size = match io.size {
                1 => 0,
                2 => 1,
                4 => 3,
                s => panic!("an I/O size of {s}"),
            };
            let encoded = size
                | u64::from(io.direction == introvisor::arch::amd64::IoDirection::In) << 3
                | u64::from(io.string) << 4
                | u64::from(io.rep) << 5
                | u64::from(io.immediate) << 6
                | u64::from(io.port) << 16;
            assert_eq!(encoded, q & 0xffff_007f, "I/O {io:?} from {q:#x}");
            assert_eq!(IoAccess::decode(encoded), Ok(io));
        }
        Err(e) => {
            assert!(matches!(q & 0b111, 2 | 4..=7));
            named(e);
        }
    }
}

fn exit(info: &ExitInfo) {
    let basic = (info.reason & 0xffff) as u16;
    let decoded = Exit::decode(info);
    assert_eq!(decoded, Exit::decode(info), "decoding is a function");
    let exit = match decoded {
        Ok(exit) => exit,
        Err(e) => {
            match e {
                EptError::EntryFailure(r) => assert_eq!(r, info.reason),
                EptError::UnknownExitReason(r) => {
                    assert_eq!(r, basic);
                    assert!(r > MAX_EXIT_REASON);
                }
                EptError::InvalidExitInformation(_) => assert!(matches!(
                    basic,
                    reason::EXCEPTION_OR_NMI | reason::CR_ACCESS | reason::IO_INSTRUCTION
                )),
                other => panic!("Exit::decode failed with {other:?}"),
            }
            if info.reason & EXIT_REASON_ENTRY_FAILURE != 0 {
                assert!(matches!(e, EptError::EntryFailure(_)));
            }
            named(e);
            return;
        }
    };
    assert_eq!(info.reason & EXIT_REASON_ENTRY_FAILURE, 0);
    assert!(basic <= MAX_EXIT_REASON);
    match exit {
        Exit::Exception(x) => {
            assert_eq!(basic, reason::EXCEPTION_OR_NMI);
            let ii = InterruptionInfo(info.interruption_information);
            assert!(ii.valid());
            assert_eq!(x.vector, ii.vector());
            assert_eq!(x.vector, info.interruption_information as u8);
            assert_eq!(x.typ.to_vmx(), ii.type_bits());
            assert_eq!(
                u32::from(x.typ.to_vmx()),
                info.interruption_information >> 8 & 7
            );
            assert_eq!(x.error_code.is_some(), ii.error_code_valid());
            if let Some(code) = x.error_code {
                assert_eq!(code, info.interruption_error_code);
            }
            if x.typ.is_software() {
                assert!((1..=15).contains(&x.instruction_length));
                assert_eq!(u32::from(x.instruction_length), info.instruction_length);
            } else {
                assert_eq!(x.instruction_length, 0);
            }
            assert_eq!(x.qualification, info.qualification);
        }
        Exit::CrAccess(cr) => {
            assert_eq!(basic, reason::CR_ACCESS);
            assert_eq!(CrAccess::decode(info.qualification), Ok(cr));
        }
        Exit::Io(io) => {
            assert_eq!(basic, reason::IO_INSTRUCTION);
            assert_eq!(IoAccess::decode(info.qualification), Ok(io));
        }
        Exit::EptViolation {
            qualification,
            gpa,
            gla,
        } => {
            assert_eq!(basic, reason::EPT_VIOLATION);
            assert_eq!(qualification, EptViolation(info.qualification));
            assert_eq!(gpa, info.guest_physical_address);
            assert_eq!(gla.is_some(), info.qualification & (1 << 7) != 0);
            if let Some(gla) = gla {
                assert_eq!(gla, info.guest_linear_address);
            }
        }
        Exit::EptMisconfiguration { gpa } => {
            assert_eq!(basic, reason::EPT_MISCONFIGURATION);
            assert_eq!(gpa, info.guest_physical_address);
        }
        Exit::ExternalInterrupt => assert_eq!(basic, reason::EXTERNAL_INTERRUPT),
        Exit::InterruptWindow => assert_eq!(basic, reason::INTERRUPT_WINDOW),
        Exit::Cpuid => assert_eq!(basic, reason::CPUID),
        Exit::Wrmsr => assert_eq!(basic, reason::WRMSR),
        Exit::MonitorTrap => assert_eq!(basic, reason::MONITOR_TRAP_FLAG),
        Exit::Xsetbv => assert_eq!(basic, reason::XSETBV),
        Exit::Other(r) => {
            assert_eq!(r, basic);
            assert!(!matches!(
                r,
                reason::EXCEPTION_OR_NMI
                    | reason::EXTERNAL_INTERRUPT
                    | reason::INTERRUPT_WINDOW
                    | reason::CPUID
                    | reason::CR_ACCESS
                    | reason::IO_INSTRUCTION
                    | reason::WRMSR
                    | reason::MONITOR_TRAP_FLAG
                    | reason::EPT_VIOLATION
                    | reason::EPT_MISCONFIGURATION
                    | reason::XSETBV
            ));
        }
        other => panic!("an exit the target does not know: {other:?}"),
    }
}

fn violation(q: u64) {
    let v = EptViolation(q);
    assert_eq!(v.read(), v.access().contains(MemoryAccess::R));
    assert_eq!(v.write(), v.access().contains(MemoryAccess::W));
    assert_eq!(v.fetch(), v.access().contains(MemoryAccess::X));
    assert_eq!(u64::from(v.entry_access().bits()), q >> 3 & 7);
    assert_eq!(v.final_translation().is_some(), v.linear_address_valid());
    assert_eq!(v.reserved_bits() & 0x1_ffff, 0);
    let d = DebugQualification(q);
    assert_eq!(u64::from(d.breakpoints()), q & 0xf);
}

fn access(bits: u8) -> MemoryAccess {
    MemoryAccess::from_bits_truncate(bits & 7)
}

fn entry(input: &mut Input<'_>, caps: EptCapabilities) {
    let frame = Hpa(input.u64());
    let level = input.u8() % 6;
    let rights = access(input.u8());
    let type_bits = input.u8() % 8;
    let flags = EptFlags::from_bits_retain(input.u64());
    let memory_type = match MemoryType::from_bits(type_bits) {
        Ok(t) => {
            assert_eq!(t as u8, type_bits);
            t
        }
        Err(e) => {
            assert!(matches!(type_bits, 2 | 3 | 7));
            named(e);
            return;
        }
    };
    match EptEntry::try_leaf(frame, level, rights, memory_type, flags, caps) {
        Ok(e) => {
            assert!(caps.leaf_at(level));
            let size = 1u64 << (12 + 9 * (u32::from(level) - 1));
            assert_eq!(frame.0 % size, 0, "a misaligned frame accepted");
            assert_eq!(e.address(), frame);
            assert_eq!(e.access(), rights);
            assert_eq!(e.memory_type_bits(), type_bits);
            assert_eq!(e.is_large(), level > 1);
            assert!(e.is_mapped());
            assert_eq!(e.is_present(), !rights.is_empty());
            assert!(!rights.contains(MemoryAccess::W) || rights.contains(MemoryAccess::R));
            assert_eq!(e.with_address(frame), e);
            assert_eq!(e.with_access(rights), e);
            assert_eq!(
                e.with_access(MemoryAccess::empty()).access(),
                MemoryAccess::empty()
            );
        }
        Err(e) => named(e),
    }
    let levels = input.u8() % 8;
    let ad = input.bool();
    match EptPointer::try_new(frame, levels, memory_type, ad, caps) {
        Ok(p) => {
            assert!(caps.walk_length(levels));
            assert_eq!(p.root(), frame);
            assert_eq!(p.levels(), levels);
            assert_eq!(p.memory_type_bits(), type_bits);
            assert_eq!(p.accessed_dirty(), ad);
        }
        Err(e) => named(e),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let info = ExitInfo {
        // Mostly reasons the decoder knows, sometimes any word.
        reason: match input.u8() % 4 {
            0 => input.u32(),
            _ => u32::from(input.u8() % 64),
        },
        qualification: input.u64(),
        guest_linear_address: input.u64(),
        guest_physical_address: input.u64(),
        instruction_length: u32::from(input.u8() % 20),
        instruction_information: input.u32(),
        interruption_information: input.u32(),
        interruption_error_code: input.u32(),
        idt_vectoring_information: input.u32(),
        idt_vectoring_error_code: input.u32(),
    };
    exit(&info);
    cr_access(info.qualification);
    io_access(info.qualification);
    violation(info.qualification);
    let ii = InterruptionInfo(info.idt_vectoring_information);
    assert_eq!(
        ii.typ().map(|t| t.to_vmx()).unwrap_or(ii.type_bits()),
        ii.type_bits()
    );
    let caps = EptCapabilities::from_bits_retain(input.u64());
    entry(&mut input, caps);
});
