//! `introvisor demo`: a guest built in memory, translated and read through `VmiCore`.

use core::fmt::Write as _;
use std::ffi::OsString;
use std::io::Write;

use introvisor::{AccessContext, Pa, Va, VmiCore, VmiDriver, VmiError};

use super::args;
use super::translate::fault_text;
use super::{EXIT_OK, Failure, help};
use introvisor_host::HostDriver;
use introvisor_host::builder::{BuildError, GuestBuilder, MapFlags, PageSize};

const USER: u64 = 0x40_0000;
const USER_STRING: u64 = USER + 0xff8;
const KTEXT: u64 = 0xffff_ffff_8100_0000;
const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
const KDATA: u64 = 0xffff_c900_0000_0000;
const TEXT: &str = "introvisor reads across page boundaries";
const WIDE: &str = "Grüße from the kernel, in UTF-16 ✓";

/// The demo guest, and the physical address of the user string.
fn build() -> Result<(introvisor_host::builder::Guest, Pa), BuildError> {
    let mut g = GuestBuilder::new(8 << 20);
    let user0 = g.map_new(Va(USER), PageSize::Size4K, MapFlags::USER_DATA)?;
    g.map_new(Va(USER + 0x1000), PageSize::Size4K, MapFlags::USER_DATA)?;
    g.map_new(Va(KTEXT), PageSize::Size2M, MapFlags::KERNEL_TEXT)?;
    g.map(
        Va(DIRECT_MAP),
        Pa(0),
        PageSize::Size1G,
        MapFlags::KERNEL_DATA,
    )?;
    g.map_new(Va(KDATA), PageSize::Size4K, MapFlags::KERNEL_DATA)?;
    let mut text = TEXT.as_bytes().to_vec();
    text.push(0);
    g.write_virtual(Va(USER_STRING), &text)?;
    g.write_virtual(Va(KTEXT), &[0x55, 0x48, 0x89, 0xe5])?; // push rbp; mov rbp, rsp
    let wide: Vec<u8> = WIDE
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    g.write_virtual(Va(KDATA + 0x100), &wide)?;
    Ok((g.finish(), Pa(user0.0 + 0xff8)))
}

fn size_name(size: u64) -> &'static str {
    match size {
        0x1000 => "4K",
        0x20_0000 => "2M",
        0x4000_0000 => "1G",
        _ => "?",
    }
}

/// The demo's report.
pub(crate) fn report() -> Result<String, String> {
    let (guest, user_pa) = build().map_err(|e| format!("building the guest failed: {e}"))?;
    let root = guest.root;
    let memory = guest.memory.len();
    let core = VmiCore::new(HostDriver::from_vec(guest.memory));
    let fail = |e: VmiError| format!("unexpected: {e}");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "introvisor demo: a guest built in memory with GuestBuilder\n\n\
         guest: {} MiB of RAM, 4-level paging, CR3 = {:#x}\n",
        memory >> 20,
        root.0
    );

    let _ = writeln!(s, "translations (va -> pa, page size, rights):");
    let rows: [(u64, &str); 6] = [
        (USER_STRING, "user data; a string starts here"),
        (KTEXT + 0x40, "kernel text"),
        (
            DIRECT_MAP + user_pa.0,
            "direct map of all RAM: the same byte",
        ),
        (KDATA + 0x100, "kernel data; a UTF-16 string"),
        (0x80_0000, "nothing mapped here"),
        (0x8000_0000_0000, "not canonical"),
    ];
    for (va, what) in rows {
        match core.translate(Va(va), root) {
            Ok(t) => {
                let _ = writeln!(
                    s,
                    "  {va:#018x} -> {:<#10x} {}  {} {:<10}  {what}",
                    t.pa.0,
                    size_name(t.page_size),
                    t.access,
                    if t.user { "user" } else { "supervisor" },
                );
            }
            Err(VmiError::Translation(pf)) => {
                let _ = writeln!(s, "  {va:#018x} unmapped: {}  {what}", fault_text(&pf));
            }
            Err(e) => return Err(fail(e)),
        }
    }

    let _ = writeln!(s, "\nstrings:");
    let text = core
        .read_string(AccessContext::paging(Va(USER_STRING), root))
        .map_err(fail)?;
    let _ = writeln!(
        s,
        "  {USER_STRING:#x} (UTF-8, crosses into the page at {:#x}): {text:?}",
        USER + 0x1000
    );
    // Virtually contiguous is not physically contiguous: through the direct map, only the
    // bytes up to the end of the frame are the string's.
    let mut head = [0u8; 8];
    core.read(
        AccessContext::paging(Va(DIRECT_MAP + user_pa.0), root),
        &mut head,
    )
    .map_err(fail)?;
    let _ = writeln!(
        s,
        "  {:#x} (the same frame through the 1 GiB direct map, up to its end): {:?}",
        DIRECT_MAP + user_pa.0,
        String::from_utf8_lossy(&head)
    );
    let wide = core
        .read_wstring(AccessContext::paging(Va(KDATA + 0x100), root))
        .map_err(fail)?;
    let _ = writeln!(s, "  {:#x} (UTF-16): {wide:?}", KDATA + 0x100);
    let code = core
        .read_u32(AccessContext::paging(Va(KTEXT), root))
        .map_err(fail)?;
    let _ = writeln!(
        s,
        "  {KTEXT:#x} (kernel text, a u32): {code:#010x} (push rbp; mov rbp, rsp)"
    );

    let _ = writeln!(s, "\ncaches:");
    let _ = writeln!(
        s,
        "  page cache (gfn_cache_metrics):        {}{}",
        core.gfn_cache_metrics(),
        if core.driver().physical_memory().is_some() {
            "\n    (bypassed: this driver lends its read-only memory directly, cheaper than caching page handles)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  translation cache (v2p_cache_metrics): {}",
        core.v2p_cache_metrics()
    );
    let _ = writeln!(
        s,
        "\nTry it on a dump: introvisor info DUMP; introvisor translate DUMP --cr3 HEX VA..."
    );
    Ok(s)
}

pub(crate) fn run(argv: &[OsString], stdout: &mut dyn Write) -> Result<i32, Failure> {
    let opts = args::parse(argv, &[])?;
    if opts.flag("help") {
        stdout.write_all(help::DEMO.as_bytes())?;
        return Ok(EXIT_OK);
    }
    if let Some(extra) = opts.positionals.first() {
        return Err(Failure::usage(format!(
            "demo takes no arguments, got '{}'",
            args::show(extra)
        )));
    }
    let text = report().map_err(Failure::Fault)?;
    stdout.write_all(text.as_bytes())?;
    Ok(EXIT_OK)
}
