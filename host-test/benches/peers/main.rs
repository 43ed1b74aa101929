//! introvisor against vmi-rs and memflow, on one synthetic guest, in one run.
//!
//! `cargo bench -p introvisor-host-test --bench peers` prints the markdown of
//! `BENCHMARKS.md`'s measured section; with `-- --update` it also rewrites that section in
//! place. `BENCH_OPS` and `BENCH_REPS` shrink a run for a quick look; `BENCH_FILTER` keeps
//! the floors and the subjects whose name contains it.
//!
//! The harness is our own, not criterion: each workload is one batch of a fixed number of
//! operations, timed whole and repeated; the table gives the median per operation and the
//! spread of the repetitions. Batches of a million operations make timer overhead
//! irrelevant, and the harness compiles in a second where criterion would add its own tree
//! of dependencies to a workspace build already paying for two peers.
//!
//! Every subject answers one verification pass of each workload first; its answers are
//! compared with the guest builder's own record of the mappings (never with another
//! walker), and mismatches are counted in the table.
//!
//! Adding a subject (the EPT backend through a simulated EPT, say) is one `impl Subject`
//! and one line in `main`.

mod floor;
mod guest;
mod subjects;

use core::fmt::Write as _;
use core::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

use introvisor::arch::amd64::{Paging, PagingMode};
use introvisor::{AccessContext, Pa, Va, VmiCore};
use introvisor_host::HostDriver;

use crate::floor::Floor;
use crate::guest::{LEN_4K, PA_4K, STRING_LIMIT, Synthetic, VA_2M, VA_4K};
use crate::subjects::{Caches, Introvisor, Memflow, VmiRs};

/// One row of the benchmark: a library in one configuration, and the workload methods.
///
/// Methods take `&mut self` because memflow needs it; a `None` or `false` answer is a
/// failure, counted as a mismatch.
pub(crate) trait Subject {
    /// The row's label.
    fn name(&self) -> String;
    /// Drops every cached translation and page.
    fn flush(&mut self);
    /// The physical address of `va`.
    fn translate(&mut self, va: u64) -> Option<u64>;
    /// The little-endian u64 at `va`.
    fn read_u64(&mut self, va: u64) -> Option<u64>;
    /// Fills `buf` from `va` on.
    fn read(&mut self, va: u64, buf: &mut [u8]) -> bool;
    /// The NUL-terminated string at `va`, at most `limit` bytes, into `buf`; its length.
    fn read_string(&mut self, va: u64, limit: usize, buf: &mut [u8]) -> Option<usize>;
    /// The physical address of each of `vas` through the subject's batch API, `u64::MAX`
    /// for a failure; `false` (the default) if it has none, and then no batch row is run.
    fn translate_many(&mut self, vas: &[u64], out: &mut [u64]) -> bool {
        let _ = (vas, out);
        false
    }
    /// The u64 at each of `vas` through the batch API, as [`Subject::translate_many`].
    fn read_u64_many(&mut self, vas: &[u64], out: &mut [u64]) -> bool {
        let _ = (vas, out);
        false
    }
}

/// Which floor a row is, if any.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Floor,
    Ours,
    Peer,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    TranslateCold,
    TranslateWarm,
    TranslateWorkingSet,
    TranslateFixed,
    TranslateFiveLevel,
    ReadWorkingSet,
    ReadMixed,
    Bulk,
    BulkContiguous,
    Strings,
}

impl Workload {
    const ALL: [Workload; 10] = [
        Self::TranslateCold,
        Self::TranslateWarm,
        Self::TranslateWorkingSet,
        Self::TranslateFixed,
        Self::TranslateFiveLevel,
        Self::ReadWorkingSet,
        Self::ReadMixed,
        Self::Bulk,
        Self::BulkContiguous,
        Self::Strings,
    ];

    fn title(self, ops: usize) -> String {
        let m = ops as f64 / 1e6;
        match self {
            Self::TranslateCold => format!("{m}M random translations, 4 KiB range, cold"),
            Self::TranslateWarm => format!("{m}M random translations, 4 KiB range, warm"),
            Self::TranslateWorkingSet => format!("{m}M translations in a 64-page working set"),
            Self::TranslateFixed => format!("{m}M translations of 64 fixed addresses"),
            Self::TranslateFiveLevel => {
                format!("{m}M random translations, 5-level paging, 4 KiB range, cold")
            }
            Self::ReadWorkingSet => format!("{m}M u64 reads in a 64-page working set"),
            Self::ReadMixed => format!("{m}M random u64 reads, 4 KiB + 2 MiB + 1 GiB pages"),
            Self::Bulk => "64 MiB bulk read in 1 MiB chunks".into(),
            Self::BulkContiguous => {
                "64 MiB bulk read in 1 MiB chunks, physically contiguous (2 MiB pages)".into()
            }
            Self::Strings => format!("{}k NUL-terminated string reads", STRINGS_N / 1000),
        }
    }
}

const STRINGS_N: usize = guest::STRINGS;
const BULK_CHUNK: usize = 1 << 20;
/// The physically contiguous bulk read: the first 64 MiB of the 2 MiB range, whose pages
/// map PA 0 to 64 MiB in order.
const BULK_CONTIGUOUS_PA: u64 = 0;

struct Cell {
    workload: Workload,
    subject: String,
    kind: Kind,
    /// Nanoseconds per operation (per 1 MiB chunk for the bulk read), one per repetition.
    samples: Vec<f64>,
    checked: u64,
    mismatches: u64,
}

impl Cell {
    fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    }

    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }
}

/// The guest's own answers, computed once.
struct Expected {
    random_4k: Vec<Option<u64>>,
    working_set: Vec<Option<u64>>,
    fixed: Vec<Option<u64>>,
    working_set_values: Vec<Option<u64>>,
    mixed_values: Vec<Option<u64>>,
    bulk: Vec<u8>,
    bulk_contiguous: Vec<u8>,
    strings: Vec<Vec<u8>>,
}

struct Bench {
    syn: Synthetic,
    expected: Expected,
    memory: &'static [u8],

    reps: usize,
    cells: Vec<Cell>,
}

fn time<F: FnMut()>(mut f: F) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_nanos() as f64
}

fn count_mismatches(got: &[u64], want: &[Option<u64>]) -> u64 {
    got.iter()
        .zip(want)
        .filter(|(g, w)| **w != Some(**g) || **g == u64::MAX)
        .count() as u64
}

#[inline(never)]
fn translate_batch<S: Subject>(s: &mut S, vas: &[u64], out: &mut [u64]) {
    for (o, &va) in out.iter_mut().zip(vas) {
        *o = s.translate(va).unwrap_or(u64::MAX);
    }
    black_box(out);
}

#[inline(never)]
fn read_u64_batch<S: Subject>(s: &mut S, vas: &[u64], out: &mut [u64]) {
    for (o, &va) in out.iter_mut().zip(vas) {
        *o = s.read_u64(va).unwrap_or(u64::MAX);
    }
    black_box(out);
}

#[inline(never)]
fn bulk_batch<S: Subject>(
    s: &mut S,
    base: u64,
    buf: &mut [u8],
    mut check: impl FnMut(usize, bool, &[u8]),
) {
    for (i, va) in (base..base + LEN_4K).step_by(BULK_CHUNK).enumerate() {
        let ok = s.read(va, buf);
        check(i, ok, buf);
    }
}

#[inline(never)]
fn strings_batch<S: Subject>(s: &mut S, vas: &[u64], buf: &mut [u8], lens: &mut [u64]) {
    for (l, &va) in lens.iter_mut().zip(vas) {
        *l = s
            .read_string(va, STRING_LIMIT, buf)
            .map_or(u64::MAX, |n| n as u64 | u64::from(buf[0]) << 32);
        black_box(&mut *buf);
    }
}

impl Bench {
    fn push(
        &mut self,
        workload: Workload,
        subject: String,
        kind: Kind,
        samples: Vec<f64>,
        checked: u64,
        mismatches: u64,
    ) {
        println!(
            "  {:<46} {:<34} {:>10.1} ({} mismatches)",
            workload.title(self.syn.random_4k.len()),
            subject,
            {
                let mut s = samples.clone();
                s.sort_by(f64::total_cmp);
                s[s.len() / 2]
            },
            mismatches
        );
        self.cells.push(Cell {
            workload,
            subject,
            kind,
            samples,
            checked,
            mismatches,
        });
    }

    /// Runs every workload on one subject (unless `BENCH_FILTER` names others).
    fn run<S: Subject>(&mut self, s: &mut S, kind: Kind) {
        let name = s.name();
        if let Ok(filter) = std::env::var("BENCH_FILTER")
            && !name.contains(&filter)
            && kind != Kind::Floor
        {
            return;
        }
        let n = self.syn.random_4k.len();
        let mut out = vec![0u64; n];

        // Translations, cold: flushed before the verification pass and every repetition.
        s.flush();
        translate_batch(s, &self.syn.random_4k, &mut out);
        let bad = count_mismatches(&out, &self.expected.random_4k);
        let samples = (0..self.reps)
            .map(|_| {
                s.flush();
                time(|| translate_batch(s, &self.syn.random_4k, &mut out)) / n as f64
            })
            .collect();
        self.push(
            Workload::TranslateCold,
            name.clone(),
            kind,
            samples,
            n as u64,
            bad,
        );

        // Translations, warm: the same addresses again, without a flush.
        translate_batch(s, &self.syn.random_4k, &mut out);
        let bad = count_mismatches(&out, &self.expected.random_4k);
        let samples = (0..self.reps)
            .map(|_| time(|| translate_batch(s, &self.syn.random_4k, &mut out)) / n as f64)
            .collect();
        self.push(
            Workload::TranslateWarm,
            name.clone(),
            kind,
            samples,
            n as u64,
            bad,
        );

        // The working set, warm.
        translate_batch(s, &self.syn.working_set, &mut out);
        let bad = count_mismatches(&out, &self.expected.working_set);
        let samples = (0..self.reps)
            .map(|_| time(|| translate_batch(s, &self.syn.working_set, &mut out)) / n as f64)
            .collect();
        self.push(
            Workload::TranslateWorkingSet,
            name.clone(),
            kind,
            samples,
            n as u64,
            bad,
        );

        // 64 fixed addresses, warm.
        translate_batch(s, &self.syn.fixed, &mut out);
        let bad = count_mismatches(&out, &self.expected.fixed);
        let samples = (0..self.reps)
            .map(|_| time(|| translate_batch(s, &self.syn.fixed, &mut out)) / n as f64)
            .collect();
        self.push(
            Workload::TranslateFixed,
            name.clone(),
            kind,
            samples,
            n as u64,
            bad,
        );

        read_u64_batch(s, &self.syn.working_set, &mut out);
        let bad = count_mismatches(&out, &self.expected.working_set_values);
        let samples = (0..self.reps)
            .map(|_| time(|| read_u64_batch(s, &self.syn.working_set, &mut out)) / n as f64)
            .collect();
        self.push(
            Workload::ReadWorkingSet,
            name.clone(),
            kind,
            samples,
            n as u64,
            bad,
        );

        // The cold random translations and the mixed reads again, through the batch API.
        let batch_name = format!("{name}, batch API");
        s.flush();
        if s.translate_many(&self.syn.random_4k, &mut out) {
            let bad = count_mismatches(&out, &self.expected.random_4k);
            let samples = (0..self.reps)
                .map(|_| {
                    s.flush();
                    time(|| {
                        s.translate_many(&self.syn.random_4k, &mut out);
                        black_box(&mut out);
                    }) / n as f64
                })
                .collect();
            self.push(
                Workload::TranslateCold,
                batch_name.clone(),
                kind,
                samples,
                n as u64,
                bad,
            );
        }
        if s.read_u64_many(&self.syn.mixed, &mut out) {
            let bad = count_mismatches(&out, &self.expected.mixed_values);
            let samples = (0..self.reps)
                .map(|_| {
                    time(|| {
                        s.read_u64_many(&self.syn.mixed, &mut out);
                        black_box(&mut out);
                    }) / n as f64
                })
                .collect();
            self.push(
                Workload::ReadMixed,
                batch_name,
                kind,
                samples,
                n as u64,
                bad,
            );
        }

        // Random u64 reads across the three page sizes.
        read_u64_batch(s, &self.syn.mixed, &mut out);
        let bad = count_mismatches(&out, &self.expected.mixed_values);
        let samples = (0..self.reps)
            .map(|_| time(|| read_u64_batch(s, &self.syn.mixed, &mut out)) / n as f64)
            .collect();
        self.push(
            Workload::ReadMixed,
            name.clone(),
            kind,
            samples,
            n as u64,
            bad,
        );
        drop(out);

        // The bulk reads: the 4 KiB range (scattered frames), and the start of the 2 MiB
        // range (physically contiguous).
        let mut buf = vec![0u8; BULK_CHUNK];
        for (workload, base) in [(Workload::Bulk, VA_4K), (Workload::BulkContiguous, VA_2M)] {
            let expected = if workload == Workload::Bulk {
                &self.expected.bulk
            } else {
                &self.expected.bulk_contiguous
            };
            let mut bad = 0u64;
            bulk_batch(s, base, &mut buf, |i, ok, got| {
                let want = &expected[i * BULK_CHUNK..(i + 1) * BULK_CHUNK];
                if !ok || got != want {
                    bad += 1;
                }
            });
            let chunks = (LEN_4K as usize / BULK_CHUNK) as f64;
            let samples = (0..self.reps)
                .map(|_| {
                    time(|| {
                        bulk_batch(s, base, &mut buf, |_, ok, b| {
                            black_box((ok, b));
                        })
                    }) / chunks
                })
                .collect();
            self.push(workload, name.clone(), kind, samples, chunks as u64, bad);
        }

        // Strings.
        let vas = &self.syn.strings;
        let mut buf = vec![0u8; STRING_LIMIT];
        let mut lens = vec![0u64; vas.len()];
        let mut bad = 0u64;
        for (va, want) in vas.iter().zip(&self.expected.strings) {
            match s.read_string(*va, STRING_LIMIT, &mut buf) {
                Some(n) if buf[..n] == want[..] => {}
                _ => bad += 1,
            }
        }
        let samples = (0..self.reps)
            .map(|_| time(|| strings_batch(s, vas, &mut buf, &mut lens)) / vas.len() as f64)
            .collect();
        self.push(
            Workload::Strings,
            name,
            kind,
            samples,
            vas.len() as u64,
            bad,
        );
    }

    /// The memcpy floors of the bulk read: the same bytes copied from their frames in
    /// 4 KiB pieces whose addresses are known in advance (no walk: the floor), and, for
    /// reference, 64 MiB copied from one contiguous region.
    fn run_memcpy(&mut self) {
        let frames: Vec<usize> = (VA_4K..VA_4K + LEN_4K)
            .step_by(4096)
            .map(|va| guest::expected_pa(&self.syn.guest, va).expect("mapped") as usize)
            .collect();
        let mut dst = vec![0u8; BULK_CHUNK];
        let chunks = (LEN_4K as usize / BULK_CHUNK) as f64;
        let memory = self.memory;
        floor::gather(memory, &frames, &mut dst);
        let samples = (0..self.reps)
            .map(|_| time(|| floor::gather(memory, &frames, &mut dst)) / chunks)
            .collect();
        self.push(
            Workload::Bulk,
            FLOOR_MEMCPY.into(),
            Kind::Floor,
            samples,
            0,
            0,
        );
        let src = &memory[PA_4K as usize..(PA_4K + LEN_4K) as usize];
        floor::memcpy(src, &mut dst);
        let samples = (0..self.reps)
            .map(|_| time(|| floor::memcpy(src, &mut dst)) / chunks)
            .collect();
        self.push(
            Workload::Bulk,
            FLOOR_CONTIGUOUS.into(),
            Kind::Floor,
            samples,
            0,
            0,
        );
        // The floor of the contiguous bulk read: the same bytes, 1 MiB at a time.
        let start = BULK_CONTIGUOUS_PA as usize;
        let src = &memory[start..start + LEN_4K as usize];
        floor::memcpy(src, &mut dst);
        let samples = (0..self.reps)
            .map(|_| time(|| floor::memcpy(src, &mut dst)) / chunks)
            .collect();
        self.push(
            Workload::BulkContiguous,
            FLOOR_CONTIGUOUS.into(),
            Kind::Floor,
            samples,
            0,
            0,
        );
    }
}

impl Bench {
    /// Random translations in 5-level paging, cold: the naive 5-level walk and introvisor
    /// in each configuration. The peers are not run: vmi-rs 0.13's `translate_address`
    /// starts at the PML4 (vmi-arch-amd64 `lib.rs`), and memflow 0.2 documents LA57 as
    /// unsupported (`architecture/mod.rs`).
    fn run_five_level(&mut self, ops: usize) {
        let (g, vas) = guest::build_five_level(ops);
        let expected: Vec<Option<u64>> = vas.iter().map(|&va| guest::expected_pa(&g, va)).collect();
        let root = g.root;
        let n = vas.len();
        let mut out = vec![0u64; n];
        let memory = &g.memory[..];
        let floor_pass = |out: &mut [u64]| {
            for (o, &va) in out.iter_mut().zip(&vas) {
                *o = floor::walk5(memory, root.0, va);
            }
            black_box(out);
        };
        floor_pass(&mut out);
        let bad = count_mismatches(&out, &expected);
        let samples = (0..self.reps)
            .map(|_| time(|| floor_pass(&mut out)) / n as f64)
            .collect();
        self.push(
            Workload::TranslateFiveLevel,
            FLOOR_WALK.into(),
            Kind::Floor,
            samples,
            n as u64,
            bad,
        );
        for caches in [Caches::Default, Caches::NoPageCache, Caches::None] {
            let mut s = Introvisor::new(memory, root, caches);
            let name = s.name();
            if let Ok(filter) = std::env::var("BENCH_FILTER")
                && !name.contains(&filter)
            {
                continue;
            }
            s.core.set_paging(Paging::new(PagingMode::Level5));
            s.flush();
            translate_batch(&mut s, &vas, &mut out);
            let bad = count_mismatches(&out, &expected);
            let samples = (0..self.reps)
                .map(|_| {
                    s.flush();
                    time(|| translate_batch(&mut s, &vas, &mut out)) / n as f64
                })
                .collect();
            self.push(
                Workload::TranslateFiveLevel,
                name,
                Kind::Ours,
                samples,
                n as u64,
                bad,
            );
        }
    }
}

const FLOOR_WALK: &str = "floor: naive walk";
const FLOOR_MEMCPY: &str = "floor: memcpy of the same frames";
const FLOOR_CONTIGUOUS: &str = "memcpy, one contiguous 64 MiB region";

/// Two threads on one shared core, against one: warm translations and u64 reads in the
/// working set, in pairs of runs (one thread, then two). Returns the medians of the
/// one-thread and two-thread rates (Mops/s) and the ratio of each pair, sorted.
fn threads(
    core: &VmiCore<HostDriver>,
    root: Pa,
    vas: &[u64],
    reps: usize,
    read: bool,
) -> (f64, f64, Vec<f64>) {
    let work = |list: &[u64]| {
        let mut acc = 0u64;
        for &va in list {
            acc ^= if read {
                core.read_u64(AccessContext::paging(Va(va), root))
                    .unwrap_or(u64::MAX)
            } else {
                core.translate(Va(va), root).map_or(u64::MAX, |t| t.pa.0)
            };
        }
        black_box(acc);
    };
    // The second thread walks the same set in another order.
    let rotated: Vec<u64> = vas[vas.len() / 2..]
        .iter()
        .chain(&vas[..vas.len() / 2])
        .copied()
        .collect();
    work(vas);
    // One thread and two, both on spawned threads released by a barrier, alternated so
    // that a disturbance from outside hits both alike. Each thread times its own work;
    // a run lasts from the first start to the last end. (Timing from the main thread
    // after the barrier measured nothing when, on two cores, the workers ran first.)
    let run = |lists: &[&[u64]]| {
        let barrier = Barrier::new(lists.len());
        let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
            let handles: Vec<_> = lists
                .iter()
                .map(|&list| {
                    let barrier = &barrier;
                    let work = &work;
                    scope.spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        work(list);
                        (start, Instant::now())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker"))
                .collect()
        });
        let first = spans.iter().map(|s| s.0).min().expect("a thread");
        let last = spans.iter().map(|s| s.1).max().expect("a thread");
        let ops = lists.iter().map(|l| l.len()).sum::<usize>();
        ops as f64 / (last - first).as_nanos() as f64 * 1e3
    };
    let mut one = Vec::new();
    let mut two = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..reps.max(7) {
        let (a, b) = (run(&[vas]), run(&[vas, &rotated]));
        one.push(a);
        two.push(b);
        ratios.push(b / a);
    }
    one.sort_by(f64::total_cmp);
    two.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    (one[one.len() / 2], two[two.len() / 2], ratios)
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc (unknown)".into());
    format!("{model}, {cores} cores; {rustc}; profile `bench` (opt-level 3)")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn main() {
    let update = std::env::args().any(|a| a == "--update");
    let ops = env_usize("BENCH_OPS", 1_000_000);
    let reps = env_usize("BENCH_REPS", 5).max(1);

    eprintln!("building the guest ...");
    let syn = guest::build(ops);
    let memory: &'static [u8] = Box::leak(syn.guest.memory.clone().into_boxed_slice());
    let root = syn.guest.root;
    let g = &syn.guest;
    let expected = Expected {
        random_4k: syn
            .random_4k
            .iter()
            .map(|&va| guest::expected_pa(g, va))
            .collect(),
        working_set: syn
            .working_set
            .iter()
            .map(|&va| guest::expected_pa(g, va))
            .collect(),
        fixed: syn
            .fixed
            .iter()
            .map(|&va| guest::expected_pa(g, va))
            .collect(),
        working_set_values: syn
            .working_set
            .iter()
            .map(|&va| guest::expected_u64(g, va))
            .collect(),
        mixed_values: syn
            .mixed
            .iter()
            .map(|&va| guest::expected_u64(g, va))
            .collect(),
        bulk: {
            let mut b = vec![0u8; LEN_4K as usize];
            guest::expected_bytes(g, VA_4K, &mut b).expect("4 KiB range mapped");
            b
        },
        bulk_contiguous: {
            let mut b = vec![0u8; LEN_4K as usize];
            guest::expected_bytes(g, VA_2M, &mut b).expect("2 MiB range mapped");
            let start = BULK_CONTIGUOUS_PA as usize;
            assert!(
                b[..] == g.memory[start..start + b.len()],
                "the 2 MiB range starts physically contiguous"
            );
            b
        },
        strings: syn
            .strings
            .iter()
            .map(|&va| guest::expected_string(g, va, STRING_LIMIT).expect("string mapped"))
            .collect(),
    };
    let mut bench = Bench {
        syn,
        expected,
        memory,

        reps,
        cells: Vec::new(),
    };

    eprintln!("measuring ({ops} operations per batch, {reps} repetitions) ...");
    bench.run(
        &mut Floor {
            memory,
            root: root.0,
        },
        Kind::Floor,
    );
    bench.run_memcpy();
    bench.run_five_level(ops);
    for caches in [Caches::Default, Caches::NoPageCache, Caches::None] {
        bench.run(&mut Introvisor::new(memory, root, caches), Kind::Ours);
    }
    for cached in [true, false] {
        bench.run(&mut VmiRs::new(memory, root, cached), Kind::Peer);
    }
    for cached in [true, false] {
        bench.run(&mut Memflow::new(memory, root, cached), Kind::Peer);
    }

    eprintln!("two threads ...");
    let mut thread_rows = Vec::new();
    for caches in [Caches::Default, Caches::NoPageCache] {
        let subject = Introvisor::new(memory, root, caches);
        let name = Subject::name(&subject);
        for read in [false, true] {
            let (one, two, ratios) =
                threads(&subject.core, root, &bench.syn.working_set, reps, read);
            thread_rows.push((name.clone(), read, one, two, ratios));
        }
    }

    let md = report(&bench, &thread_rows, ops);
    println!("\n{md}");
    if update {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md");
        let text = std::fs::read_to_string(path).expect("BENCHMARKS.md");
        let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
        let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
            panic!("BENCHMARKS.md has no {begin} ... {end} section");
        };
        let new = format!("{}{begin}\n{md}{}", &text[..a], &text[b..]);
        std::fs::write(path, new).expect("write BENCHMARKS.md");
        eprintln!("updated {path}");
    }
}

/// One row of the two-thread table: subject, whether it reads, the one- and two-thread
/// medians, and the sorted ratios of the pairs.
type ThreadRow = (String, bool, f64, f64, Vec<f64>);

fn report(bench: &Bench, thread_rows: &[ThreadRow], ops: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {}.\n", machine());
    let _ = writeln!(
        md,
        "`size_of::<VmiCore<HostDriver>>()` at the default capacities ({} translations, {} pages): **{} bytes** ({:.1} KiB).\n",
        introvisor::V2P_CACHE_CAPACITY,
        introvisor::GFN_CACHE_CAPACITY,
        size_of::<VmiCore<HostDriver>>(),
        size_of::<VmiCore<HostDriver>>() as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "Medians of {} repetitions; per operation, except the bulk read (per 1 MiB chunk). \
         *× best peer*: how many times faster than the fastest vmi-rs or memflow row. \
         *× floor*: time over the floor's (the naive walk; for the bulk read, memcpy of the same frames; \
         for the contiguous bulk read, memcpy of the same contiguous bytes).\n",
        bench.reps
    );
    let _ = writeln!(
        md,
        "| workload | subject | median | spread | × best peer | × floor | mismatches |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for w in Workload::ALL {
        let cells: Vec<&Cell> = bench.cells.iter().filter(|c| c.workload == w).collect();
        let best_peer = cells
            .iter()
            .filter(|c| c.kind == Kind::Peer)
            .map(|c| c.median())
            .fold(f64::INFINITY, f64::min);
        let floor_name = match w {
            Workload::Bulk => FLOOR_MEMCPY,
            Workload::BulkContiguous => FLOOR_CONTIGUOUS,
            _ => FLOOR_WALK,
        };
        let floor = cells
            .iter()
            .find(|c| c.subject == floor_name)
            .map_or(f64::NAN, |c| c.median());
        for c in &cells {
            let m = c.median();
            let vs_peer = if !best_peer.is_finite() {
                "–".to_string()
            } else if c.kind == Kind::Peer {
                format!("{:.2}", best_peer / m)
            } else {
                format!("**{:.2}**", best_peer / m)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {}–{} | {} | {:.2} | {}/{} |",
                w.title(ops),
                c.subject,
                fmt_ns(m),
                fmt_ns(c.min()),
                fmt_ns(c.max()),
                vs_peer,
                m / floor,
                c.mismatches,
                c.checked
            );
        }
    }
    let _ = writeln!(
        md,
        "\nTwo threads on one shared `VmiCore` (scoped threads, the working set, warm), in millions of operations per second; medians of {} pairs of runs (one thread, then two), and the ratio of each pair: its median and spread:\n",
        thread_rows.first().map_or(0, |r| r.4.len())
    );
    let _ = writeln!(
        md,
        "| subject | operation | 1 thread | 2 threads | 2 ÷ 1, median | 2 ÷ 1, spread |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
    for (name, read, one, two, ratios) in thread_rows {
        let op = if *read { "read_u64" } else { "translate" };
        let (lo, mid, hi) = (
            ratios.first().copied().unwrap_or(f64::NAN),
            ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN),
            ratios.last().copied().unwrap_or(f64::NAN),
        );
        let _ = writeln!(
            md,
            "| {name} | {op} | {one:.1} | {two:.1} | {mid:.2} | {lo:.2}–{hi:.2} |"
        );
    }
    md
}
