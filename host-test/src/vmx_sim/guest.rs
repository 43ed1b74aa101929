//! A guest that looks like a real one, laid out in the simulated machine's host memory:
//! 4-level tables with mixed leaf rights (kernel text RX, data RW+NX, user pages), a
//! 2 MiB guest page, an alias (two virtual addresses, one frame), a hole, and guest memory
//! in two host-physical regions with an MMIO-like gap between them (and, for the large
//! configuration, a 1 GiB region that the backend can map with a 1 GiB EPT leaf).
//!
//! The page tables are written by `introvisor-host`'s `GuestBuilder` (its own reading of
//! SDM Vol. 3A §4.5), then copied into host frames.

use std::sync::Arc;

use introvisor::arch::amd64::{Registers, Segment};
use introvisor::{Pa, Va};
use introvisor_ept::{EptCapabilities, FramePool, GuestRegion, Hpa, MemoryType};
use introvisor_host::builder::{Guest, GuestBuilder, MapFlags, PageSize};

use super::vcpu::Vmcs;
use super::{FRAME, Machine};

/// Host-physical address of the first host frame (1 GiB aligned, far from any GPA).
pub const HOST_BASE: u64 = 0x40_0000_0000;
/// Kernel text: 4 pages, RX.
pub const TEXT: u64 = 0xffff_ffff_8100_0000;
/// Kernel data: 16 pages, RW, NX.
pub const DATA: u64 = 0xffff_8880_0010_0000;
/// Pages of [`DATA`].
pub const DATA_PAGES: u64 = 16;
/// An alias of [`DATA`] page 3.
pub const ALIAS: u64 = 0xffff_c900_0000_3000;
/// User text: 2 pages, RX, user.
pub const USER_TEXT: u64 = 0x0000_5555_5555_4000;
/// User data: 4 pages, RW, NX, user.
pub const USER_DATA: u64 = 0x0000_7ffd_0000_0000;
/// A 2 MiB guest page, RW, NX.
pub const BIG_2M: u64 = 0xffff_8880_4000_0000;
/// 8 pages in the second guest region (guest-physical 16 MiB on), RW, NX.
pub const HIGH: u64 = 0xffff_8880_0200_0000;
/// A 1 GiB guest page over the 1 GiB region (large configuration only), RW, NX.
pub const BIG_1G: u64 = 0xffff_8881_0000_0000;

/// Four pages mapped (by the guest) to [`SHADOW_GFN`] on: guest-physical frames above
/// guest memory, backed only once the backend's `allocate_gfn` gives them a frame.
pub const SHADOW_VA: u64 = 0xffff_8880_0300_0000;
/// The first guest frame above guest memory that the tests hand to `allocate_gfn`.
pub const SHADOW_GFN: u64 = 0x1_0000;

/// Guest-physical start of the second region.
pub const REGION1_GPA: u64 = 16 << 20;
/// Guest-physical start of the 1 GiB region.
pub const REGION2_GPA: u64 = 1 << 30;

/// How to build the machine.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// vCPUs.
    pub vcpus: usize,
    /// Frames in the backend's pool.
    pub pool_frames: usize,
    /// Add the 1 GiB region (2 GiB of host memory, lazily zeroed).
    pub large: bool,
    /// `IA32_VMX_EPT_VPID_CAP`.
    pub caps: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            vcpus: 2,
            pool_frames: 256,
            large: false,
            caps: EptCapabilities::typical().bits(),
        }
    }
}

/// A built machine with its guest.
pub struct Sim {
    /// The machine.
    pub machine: Arc<Machine>,
    /// Guest memory, for the backend's configuration.
    pub regions: Vec<GuestRegion>,
    /// The pool, for the backend's configuration.
    pub pool: FramePool,
    /// The builder's record of every mapping.
    pub guest: Guest,
    /// The registers every vCPU starts with.
    pub regs: Registers,
}

/// The guest-physical address of `va` by the builder's record; panics if unmapped (a test
/// layout error).
pub fn gpa_of(guest: &Guest, va: u64) -> u64 {
    guest
        .lookup(Va(va))
        .unwrap_or_else(|| panic!("{va:#x} is not mapped"))
        .0
}

fn user_text() -> MapFlags {
    MapFlags {
        writable: false,
        user: true,
        executable: true,
    }
}

/// Kernel-mode 64-bit registers for `cr3`, IF set.
pub fn kernel_registers(cr3: u64) -> Registers {
    Registers {
        cr0: 0x8005_0033, // PG, WP, NE, ET, MP, PE
        cr3,
        cr4: 0x0000_06a0, // OSXMMEXCPT, OSFXSR, PGE, PAE
        efer: 0xd01,      // NXE, LMA, LME, SCE
        rflags: 0x202,    // IF
        cs: Segment {
            selector: 0x10,
            base: 0,
            limit: 0xffff_ffff,
            access: 0xa09b,
        },
        ss: Segment {
            selector: 0x18,
            base: 0,
            limit: 0xffff_ffff,
            access: 0xc093,
        },
        ..Registers::default()
    }
}

impl Sim {
    /// Builds the guest and the machine.
    pub fn new(cfg: SimConfig) -> Self {
        let mut b = GuestBuilder::new(20 << 20);
        b.map_range(Va(TEXT), 4 * FRAME, MapFlags::KERNEL_TEXT)
            .expect("text");
        b.map_range(Va(DATA), DATA_PAGES * FRAME, MapFlags::KERNEL_DATA)
            .expect("data");
        let alias_target = b.lookup(Va(DATA + 3 * FRAME)).expect("data page 3");
        b.map(
            Va(ALIAS),
            alias_target,
            PageSize::Size4K,
            MapFlags::KERNEL_DATA,
        )
        .expect("alias");
        b.map_range(Va(USER_TEXT), 2 * FRAME, user_text())
            .expect("user text");
        b.map_range(Va(USER_DATA), 4 * FRAME, MapFlags::USER_DATA)
            .expect("user data");
        b.map_new(Va(BIG_2M), PageSize::Size2M, MapFlags::KERNEL_DATA)
            .expect("2 MiB page");
        for i in 0..8 {
            b.map(
                Va(HIGH + i * FRAME),
                Pa(REGION1_GPA + 0x3000 + i * FRAME),
                PageSize::Size4K,
                MapFlags::KERNEL_DATA,
            )
            .expect("high");
        }
        for i in 0..4 {
            b.map(
                Va(SHADOW_VA + i * FRAME),
                Pa((SHADOW_GFN + i) << 12),
                PageSize::Size4K,
                MapFlags::KERNEL_DATA,
            )
            .expect("shadow");
        }
        if cfg.large {
            b.map(
                Va(BIG_1G),
                Pa(REGION2_GPA),
                PageSize::Size1G,
                MapFlags::KERNEL_DATA,
            )
            .expect("1 GiB page");
        }
        // Code that looks like code (prologues, NOPs, RET), with no 0xCC in it.
        let code: Vec<u8> = [
            0x55u8, 0x48, 0x89, 0xe5, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x5d, 0xc3, 0x90,
        ]
        .iter()
        .copied()
        .cycle()
        .take(4 * FRAME as usize)
        .collect();
        b.write_virtual(Va(TEXT), &code).expect("code");
        b.write_virtual(Va(USER_TEXT), &code[..2 * FRAME as usize])
            .expect("user code");
        for p in 0..DATA_PAGES {
            let words: Vec<u8> = (0..512u64)
                .flat_map(|i| (0xdada_0000_0000_0000 | (p << 16) | i).to_le_bytes())
                .collect();
            b.write_virtual(Va(DATA + p * FRAME), &words)
                .expect("data fill");
        }
        let top_of_region0 = b.memory_size().min(6 << 20);
        let guest = b.finish();
        assert!(
            guest
                .mappings
                .iter()
                .all(|m| m.pa.0 < top_of_region0 || m.pa.0 >= REGION1_GPA),
            "the builder spilled into the gap"
        );

        let region0 = GuestRegion {
            gpa: Pa(0),
            hpa: Hpa(HOST_BASE + (2 << 20)),
            size: 6 << 20,
            memory_type: MemoryType::WriteBack,
        };
        let region1 = GuestRegion {
            gpa: Pa(REGION1_GPA),
            hpa: Hpa(HOST_BASE + (10 << 20)),
            size: 4 << 20,
            memory_type: MemoryType::WriteBack,
        };
        let pool_base = HOST_BASE + (14 << 20);
        let mut regions = vec![region0, region1];
        let mut host_bytes = (14 << 20) + cfg.pool_frames as u64 * FRAME;
        if cfg.large {
            assert!(host_bytes <= 1 << 30, "pool too large for the large layout");
            regions.push(GuestRegion {
                gpa: Pa(REGION2_GPA),
                hpa: Hpa(HOST_BASE + (1 << 30)),
                size: 1 << 30,
                memory_type: MemoryType::WriteBack,
            });
            host_bytes = 2 << 30;
        }
        let regs = kernel_registers(guest.root.0);
        let vmcs = Vmcs {
            regs,
            ..Vmcs::default()
        };
        let machine = Machine::new(
            HOST_BASE,
            (host_bytes / FRAME) as usize,
            cfg.vcpus,
            cfg.caps,
            &vmcs,
        );
        for r in &regions[..2] {
            let start = r.gpa.0 as usize;
            let bytes = &guest.memory[start..start + r.size as usize];
            for (i, w) in bytes.chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                if v != 0 {
                    machine.mem.store_u64(r.hpa.0 + i as u64 * 8, v);
                }
            }
        }
        if cfg.large {
            // A recognisable word at the start of every 2 MiB of the 1 GiB region.
            for i in 0..512u64 {
                machine
                    .mem
                    .store_u64(HOST_BASE + (1 << 30) + (i << 21), 0x1a1a_0000_0000 | i);
            }
        }
        Self {
            machine: Arc::new(machine),
            regions,
            pool: FramePool {
                base: Hpa(pool_base),
                frames: cfg.pool_frames,
            },
            guest,
            regs,
        }
    }

    /// The host-physical address behind guest-physical `gpa` by the region list (not by
    /// any EPT).
    pub fn hpa_of(&self, gpa: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| gpa >= r.gpa.0 && gpa - r.gpa.0 < r.size)
            .map(|r| r.hpa.0 + (gpa - r.gpa.0))
    }

    /// Whether `hpa` is a frame of the pool.
    pub fn in_pool(&self, hpa: u64) -> bool {
        hpa >= self.pool.base.0 && hpa < self.pool.base.0 + self.pool.frames as u64 * FRAME
    }

    /// A snapshot of every pool frame's contents (for "tables unchanged" checks).
    pub fn pool_snapshot(&self) -> Vec<[u64; 512]> {
        (0..self.pool.frames as u64)
            .map(|i| {
                self.machine
                    .mem
                    .frame_words(self.pool.base.0 + i * FRAME)
                    .expect("pool frame inside host memory")
            })
            .collect()
    }
}
