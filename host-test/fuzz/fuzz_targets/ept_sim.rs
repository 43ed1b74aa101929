//! Sequences of EPT operations (rights, views, remaps, shadow frames, which split and
//! merge large leaves as they go) on introvisor-ept over the simulated VMX machine
//! (`introvisor_host_test::vmx_sim`), with the invariants checked after every step:
//!
//! - the backend's own check of its hierarchies (`EptBackend::verify`: well-formed
//!   entries, each table a pool frame referenced once, no leaked frame) passes;
//! - the simulator's EPT walker (an independent reading of SDM Vol. 3C 29.3), run over
//!   the tables the backend wrote for each live view, allows exactly the rights the model
//!   says a frame has (R, W and X tried one by one), and lands on the frame the model
//!   says: the frame's own, the frame a remap named, or a live shadow frame of the pool;
//! - `memory_access` and `translate` tell the same as the walk;
//! - a failed operation fails with a named error and changes nothing the model can see
//!   (an exhausted pool leaves every table as it was).
//!
//! The pool is small (the input picks 24 to 87 frames), so exhaustion is common.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Input;
use introvisor::{Gfn, MemoryAccess, Pa, View, VmiDriver};
use introvisor_ept::{Config, EptBackend, EptCapabilities};
use introvisor_host_test::vmx_sim::ept::{R, W, X};
use introvisor_host_test::vmx_sim::{Eptp, Sim, SimConfig, SimPlatform};
use libfuzzer_sys::fuzz_target;

type Backend = EptBackend<SimPlatform, 3, 512, 4, 8>;

/// What the model knows of one frame in one view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    /// Its rights, when the model knows them.
    rights: Option<MemoryAccess>,
    /// The host frame it must map, when the model knows it.
    hpa: Option<u64>,
}

struct World {
    sim: Sim,
    backend: Backend,
    /// The frames a program names: in each region (first, second, last, across 2 MiB
    /// boundaries), just past guest memory (shadow candidates) and far outside.
    gfns: Vec<Gfn>,
    /// Live views, with their default rights.
    views: BTreeMap<u16, MemoryAccess>,
    /// (view, gfn) -> what the model knows.
    model: BTreeMap<(u16, u64), Frame>,
    /// Live shadow frames: gfn -> host frame.
    shadows: BTreeMap<u64, u64>,
}

fn rights_of(bits: u8) -> MemoryAccess {
    // W without R is refused by the backend (an EPT misconfiguration): try it too.
    MemoryAccess::from_bits_truncate(bits & 7)
}

impl World {
    fn new(pool_frames: usize) -> Self {
        let cfg = SimConfig {
            vcpus: 1,
            pool_frames,
            large: false,
            ..SimConfig::default()
        };
        let sim = Sim::new(cfg);
        let platform = SimPlatform::new(sim.machine.clone());
        let config = Config::new(EptCapabilities::from_msr(cfg.caps), &sim.regions, sim.pool);
        let backend = Backend::new(platform, &config).unwrap();
        let mut gfns = Vec::new();
        for r in &sim.regions {
            let first = r.gpa.0 >> 12;
            let last = (r.gpa.0 + r.size - 1) >> 12;
            gfns.extend([first, first + 1, last, (first + last) / 2]);
            let two_mib = (r.gpa.0 + (2 << 20)) >> 12;
            if two_mib <= last {
                gfns.extend([two_mib - 1, two_mib]);
            }
        }
        let max = backend.max_gfn().0;
        gfns.extend([max + 1, max + 2, max + 0x200, 1 << 40]);
        let gfns: Vec<Gfn> = gfns
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(Gfn)
            .collect();
        let mut views = BTreeMap::new();
        views.insert(0, MemoryAccess::RWX);
        Self {
            sim,
            backend,
            gfns,
            views,
            model: BTreeMap::new(),
            shadows: BTreeMap::new(),
        }
    }

    fn gfn(&self, input: &mut Input<'_>) -> Gfn {
        self.gfns[usize::from(input.u8()) % self.gfns.len()]
    }

    fn view(&self, input: &mut Input<'_>) -> View {
        // Mostly live views, sometimes one that does not exist.
        let b = input.u8();
        if b % 8 == 7 {
            return View(u16::from(b >> 3));
        }
        let live: Vec<u16> = self.views.keys().copied().collect();
        View(live[usize::from(b) % live.len()])
    }

    /// What the model expects of `gfn` in `view`: rights and frame, each if known.
    fn expect(&self, view: u16, gfn: u64) -> Option<Frame> {
        if let Some(f) = self.model.get(&(view, gfn)) {
            return Some(*f);
        }
        let own = self.sim.hpa_of(gfn << 12);
        let shadow = self.shadows.get(&gfn).copied();
        if own.is_none() && shadow.is_none() {
            return None; // not mapped
        }
        let default = self.views[&view];
        Some(Frame {
            // A shadow frame allocated before the view was created: rights unknown.
            rights: if shadow.is_some() && view != 0 {
                None
            } else {
                Some(default)
            },
            hpa: own.or(shadow),
        })
    }

    /// The frame `gfn` maps in view 0 now, by the simulator's walk.
    fn walk_hpa(&self, view: u16, gfn: u64) -> Option<u64> {
        let eptp = self.backend.eptp(View(view)).ok()?;
        let eptp = Eptp::decode(eptp.0, self.sim.machine.walker.caps, 46)?;
        (0..8u8).find_map(|need| {
            self.sim
                .machine
                .walker
                .walk(&self.sim.machine.mem, &eptp, gfn << 12, need & 7)
                .ok()
                .map(|leaf| leaf.hpa_page)
        })
    }

    fn check(&self) {
        self.backend
            .verify()
            .unwrap_or_else(|e| panic!("the backend's hierarchies are inconsistent: {e}"));
        assert!(self.backend.free_frames() <= self.sim.pool.frames);
        for &view in self.views.keys() {
            let eptp = self
                .backend
                .eptp(View(view))
                .expect("a live view has an EPTP");
            let eptp = Eptp::decode(eptp.0, self.sim.machine.walker.caps, 46)
                .unwrap_or_else(|| panic!("view {view}: EPTP {:#x} is invalid", eptp.0));
            for &Gfn(gfn) in &self.gfns {
                let Some(expected) = self.expect(view, gfn) else {
                    assert!(
                        self.backend.translate(View(view), Pa(gfn << 12)).is_err()
                            || self.sim.hpa_of(gfn << 12).is_some(),
                        "view {view}: gfn {gfn:#x} outside memory translates"
                    );
                    continue;
                };
                let walker = &self.sim.machine.walker;
                let mem = &self.sim.machine.mem;
                let mut allowed = MemoryAccess::empty();
                let mut landed = None;
                for (need, right) in [
                    (R, MemoryAccess::R),
                    (W, MemoryAccess::W),
                    (X, MemoryAccess::X),
                ] {
                    match walker.walk(mem, &eptp, gfn << 12, need) {
                        Ok(leaf) => {
                            allowed |= right;
                            landed = Some(leaf.hpa_page);
                        }
                        Err(e) => {
                            let text = format!("{e:?}");
                            assert!(
                                !text.contains("Misconfig"),
                                "view {view}: gfn {gfn:#x}: {text}"
                            );
                        }
                    }
                }
                if let Some(rights) = expected.rights {
                    assert_eq!(
                        allowed, rights,
                        "view {view}: gfn {gfn:#x}: the EPT allows other rights"
                    );
                    let told = self.backend.memory_access(Gfn(gfn), View(view));
                    assert_eq!(
                        told.ok(),
                        Some(rights),
                        "view {view}: gfn {gfn:#x}: memory_access"
                    );
                }
                if let (Some(hpa), Some(landed)) = (expected.hpa, landed) {
                    assert_eq!(landed, hpa, "view {view}: gfn {gfn:#x} maps another frame");
                }
                if let Some(landed) = landed {
                    let guest = self
                        .sim
                        .regions
                        .iter()
                        .any(|r| landed >= r.hpa.0 && landed < r.hpa.0 + r.size);
                    let shadow = self.shadows.values().any(|&h| h == landed);
                    assert!(
                        guest || shadow,
                        "view {view}: gfn {gfn:#x} maps {landed:#x}, a frame neither guest memory nor a live shadow"
                    );
                    let t = self.backend.translate(View(view), Pa(gfn << 12)).unwrap();
                    assert_eq!(t.hpa.0 & !0xfff, landed, "translate and the walk differ");
                }
            }
        }
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.u8() % 8 {
            0 | 1 => {
                let (gfn, view, access) =
                    (self.gfn(input), self.view(input), rights_of(input.u8()));
                if self.backend.set_memory_access(gfn, view, access).is_ok() {
                    let known = self.expect(view.0, gfn.0);
                    self.model.insert(
                        (view.0, gfn.0),
                        Frame {
                            rights: Some(access),
                            hpa: known.and_then(|f| f.hpa),
                        },
                    );
                }
            }
            2 => {
                let access = rights_of(input.u8());
                if let Ok(view) = self.backend.create_view(access) {
                    assert!(
                        !self.views.contains_key(&view.0),
                        "view {} handed out twice",
                        view.0
                    );
                    self.views.insert(view.0, access);
                }
            }
            3 => {
                let view = self.view(input);
                if self.backend.destroy_view(view).is_ok() {
                    assert_ne!(view.0, 0, "the default view was destroyed");
                    self.views.remove(&view.0);
                    self.model.retain(|&(v, _), _| v != view.0);
                }
            }
            4 => {
                let (view, old, new) = (self.view(input), self.gfn(input), self.gfn(input));
                let target = self.walk_hpa(0, new.0);
                if self.backend.change_view_gfn(view, old, new).is_ok() {
                    assert_ne!(view.0, 0);
                    let rights = self.expect(view.0, old.0).and_then(|f| f.rights);
                    self.model.insert(
                        (view.0, old.0),
                        Frame {
                            rights,
                            hpa: target,
                        },
                    );
                }
            }
            5 => {
                let (view, gfn) = (self.view(input), self.gfn(input));
                if self.backend.reset_view_gfn(view, gfn).is_ok() {
                    let rights = self.expect(view.0, gfn.0).and_then(|f| f.rights);
                    let own = self
                        .sim
                        .hpa_of(gfn.0 << 12)
                        .or(self.shadows.get(&gfn.0).copied());
                    self.model
                        .insert((view.0, gfn.0), Frame { rights, hpa: own });
                }
            }
            6 => {
                let gfn = self.gfn(input);
                if self.backend.allocate_gfn(gfn).is_ok() {
                    assert!(gfn.0 > self.backend.max_gfn().0);
                    let hpa = self
                        .walk_hpa(0, gfn.0)
                        .expect("a shadow frame is mapped in view 0");
                    assert!(self.sim.in_pool(hpa), "a shadow frame outside the pool");
                    self.shadows.insert(gfn.0, hpa);
                    // Remaps that named this gfn before it existed are not possible; the
                    // views' rights of it are their defaults.
                    for (&v, &default) in &self.views {
                        let rights = if v == 0 { MemoryAccess::RWX } else { default };
                        self.model.insert(
                            (v, gfn.0),
                            Frame {
                                rights: Some(rights),
                                hpa: Some(hpa),
                            },
                        );
                    }
                }
            }
            _ => {
                let gfn = self.gfn(input);
                if self.backend.free_gfn(gfn).is_ok() {
                    assert!(
                        self.shadows.remove(&gfn.0).is_some(),
                        "freed a gfn never allocated"
                    );
                    self.model.retain(|&(_, g), _| g != gfn.0);
                    // A view that remapped a frame onto the freed one: the model no longer
                    // knows what it maps (the walk must still land on a live frame).
                    for f in self.model.values_mut() {
                        if f.hpa.is_some()
                            && !self.sim.regions.iter().any(|r| {
                                f.hpa.is_some_and(|h| h >= r.hpa.0 && h < r.hpa.0 + r.size)
                            })
                            && !self.shadows.values().any(|&h| Some(h) == f.hpa)
                        {
                            f.hpa = None;
                        }
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let pool = 24 + usize::from(input.u8() % 64);
    let mut world = World::new(pool);
    world.check();
    let mut steps = 0;
    while !input.is_empty() && steps < 48 {
        steps += 1;
        world.step(&mut input);
        world.check();
    }
});
