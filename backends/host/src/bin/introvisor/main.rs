//! The `introvisor` command-line tool: `demo`, `info`, `translate` and `read`; and for
//! Linux guests `ps`, `modules`, `symbols`, `maps` and `linux`.
//!
//! The tool is this package's binary, not library API: its modules are private to it and
//! use the library (`introvisor_host`) as any other user would. [`main`] only hands the
//! process's arguments and streams to [`run`], which takes them as parameters so that the
//! commands' own unit tests need no process. The output formats and exit codes are a
//! contract other tools script against: they are written out in each subcommand's
//! `--help` (see [`help`]) and tested, on the binary run as a process, in `tests/cli.rs`.
//!
//! Exit codes: 0 success; 1 a read that met unmapped memory (or a walk that failed for a
//! reason other than a page fault); 2 a usage error, a malformed number, or a dump that
//! cannot be opened; 3 the output could not be written (a closed pipe, a full disk).
//!
//! Every byte that came from a dump or standard input is escaped before it is printed
//! (see [`escape`]), and so is every message on stderr.

mod args;
mod demo;
mod escape;
mod info;
mod json;
mod linux;
mod progress;
mod read;
mod target;
mod translate;

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};

/// Success.
const EXIT_OK: i32 = 0;
/// A read met memory that is not mapped or not in the dump.
const EXIT_FAULT: i32 = 1;
/// A usage error, a malformed number, or an unreadable dump.
const EXIT_USAGE: i32 = 2;
/// Writing the output failed: a closed pipe, a full disk. Not a usage error: the command
/// was right, its output did not arrive whole.
const EXIT_OUTPUT: i32 = 3;

/// The streams a command works on.
struct Io<'a> {
    /// Standard input (addresses for `translate`).
    stdin: &'a mut dyn Read,
    /// Standard output.
    stdout: &'a mut dyn Write,
    /// Standard error: messages and the progress line.
    stderr: &'a mut dyn Write,
    /// Whether stderr is a terminal (progress is shown only then, unless forced).
    stderr_is_terminal: bool,
}

/// Why a command stopped.
#[derive(Debug)]
enum Failure {
    /// Bad usage: the message, then a hint to `--help`; exit 2.
    Usage(String),
    /// Bad input (a malformed number, an unreadable dump); exit 2.
    Input(String),
    /// Unmapped memory where it had to be mapped; exit 1.
    Fault(String),
    /// Writing the output failed.
    Output(io::Error),
}

impl Failure {
    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Self::Input(msg.into())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Output(e)
    }
}

/// Help texts.
mod help {
    pub(crate) use super::help_linux::{LINUX, MAPS, MODULES, PS, SYMBOLS};

    /// `introvisor --help`.
    pub(crate) const TOP: &str = "\
introvisor: look inside a virtual machine's memory dump

Usage: introvisor <COMMAND> [ARGS...]

Commands:
  demo        build a small guest in memory and show translations, strings, caches
  info        describe a dump: format, size, memory ranges, vCPUs
  translate   translate virtual addresses to guest-physical ones
  read        read virtual or physical memory (hex dump, raw bytes, or JSON)
  ps          Linux: the processes (pid ppid comm pgd)
  modules     Linux: the loaded kernel modules
  symbols     Linux: the kernel's symbols (kallsyms), all or by name
  maps        Linux: the memory regions of one process
  linux       Linux: what was found in the dump and how

A DUMP is an ELF core file as written by QEMU's dump-guest-memory or `virsh dump
--memory-only`, a LiME image (lime.ko's format=lime), or a raw image of
guest-physical memory (byte n = address n). The format is recognised by content: a
file is raw only when no known header matched, and zstd, gzip, xz and LZ4 files are
refused (decompress them first). --format raw|elf|lime reads a file as that format
whatever it starts with.

Numbers: addresses, CR3 and LEN are hexadecimal, with or without 0x; '_' may
separate digits. Only --vcpu and --maxphyaddr take decimal numbers.

--json (info, translate, read) writes JSON for scripts instead of text: addresses and
entry values as \"0x...\" strings (JSON numbers lose precision above 2^53), counts and
sizes as numbers, every control character escaped.

Exit status: 0 success; 1 a read met unmapped memory; 2 a usage error, a malformed
number, or a dump that cannot be opened; 3 the output could not be written (a
closed pipe, a full disk).

Bytes from a dump or from standard input are escaped before they are printed:
control characters, '\\' and bytes that are not UTF-8 appear as \\xNN.

Run 'introvisor <COMMAND> --help' for the details of a command.
";

    /// `introvisor demo --help`.
    pub(crate) const DEMO: &str = "\
introvisor demo: build a guest in memory and look inside it (no input needed)

Usage: introvisor demo

Builds a guest with 4-level page tables mapping 4 KiB, 2 MiB and 1 GiB pages, a
string that crosses a page boundary and a UTF-16 string; then translates and reads
in it through introvisor's VmiCore and prints the translations (va -> pa, page
size, rights), the strings, and the counters of the page and translation caches.
";

    /// `introvisor info --help`.
    pub(crate) const INFO: &str = "\
introvisor info: describe a dump

Usage: introvisor info DUMP [--format raw|elf|lime] [--json]

Prints the format (as detected: 'raw (no known header)' when no known header
matched), the file size, the guest-physical memory ranges (with their file
offsets) and, for an ELF core, each vCPU: where its registers come from,
CR0/CR3/CR4, the derived EFER, the paging mode, RIP and CPL.

Options:
  --format FORMAT    read the dump as raw, elf or lime, whatever its content
  --json             print one JSON object instead:
                       {\"file\", \"format\": \"raw\"|\"elf\"|\"lime\", \"description\",
                        \"forced\", \"elf\": {\"class\", \"machine\"} or null,
                        \"file_size\", \"memory_size\",
                        \"ranges\": [{\"start\", \"end\" (inclusive), \"len\", \"file_offset\"}],
                        \"vcpus\": [{\"index\", \"source\": \"qemu-cpu-state\"|\"prstatus\",
                                   \"control_registers\", \"cr0\", \"cr3\", \"cr4\", \"efer\",
                                   \"efer_derived\", \"paging\": \"off\"|\"32\"|\"pae\"|\"4\"|\"5\",
                                   \"rip\", \"rsp\", \"cpl\", ...}],
                        \"notes\": [{\"name\" (UTF-8, U+FFFD for bad bytes),
                                   \"name_hex\" (the bytes held), \"name_len\" (the
                                   name's full length), \"type\", \"size\"}],
                        \"warnings\": [...]}

Only regular files are read: a FIFO, a pipe, a device or a directory is refused.
Note names are escaped (control characters and bytes that are not UTF-8 as \\xNN)
and cut to 64 bytes.
Exit status: 0 success; 2 the dump cannot be opened; 3 the output could not be
written (a closed pipe, a full disk).
";

    /// `introvisor translate --help`.
    pub(crate) const TRANSLATE: &str = "\
introvisor translate: translate virtual addresses to guest-physical addresses

Usage: introvisor translate DUMP [--cr3 HEX] [OPTIONS] [VA ...]

With no VA arguments, reads one VA per line from standard input (blank lines and
lines starting with '#' are skipped; a line longer than 4096 bytes is an error,
reported by its number and length, and skipped). Prints one line per VA, in input
order:

  0x<va> 0x<pa>
  0x<va> unmapped <reason> level=<n> entry=0x<entry-pa> value=0x<entry>

Hex is lowercase without leading zeros. <reason> is one of:
  not-present           the entry's P bit is clear
  reserved-bit          the entry sets a reserved bit
  table-outside-memory  the entry lies outside the dump's memory
  non-canonical         the address is not canonical (no entry read: entry=0x0)
  access-denied         the rights forbid the access
  fault                 any other page fault
level is where the walk stopped: 1 = PTE, 2 = PDE, 3 = PDPTE, 4 = PML4E, 5 = PML5E.

With --json, one JSON object per line (JSON Lines) instead, in input order:
  {\"va\": \"0x..\", \"mapped\": true, \"pa\": \"0x..\", \"page_size\": N, \"access\": \"rwx\",
   \"user\": BOOL}
  {\"va\": \"0x..\", \"mapped\": false, \"error\": \"page-fault\", \"reason\": <reason>,
   \"level\": N, \"entry\": \"0x..\", \"value\": \"0x..\"}
  {\"va\": \"0x..\", \"mapped\": false, \"error\": \"walk-failed\", \"message\": \"...\"}
and with --verbose, \"walk\": [{\"level\", \"name\", \"index\", \"entry\", \"value\", \"flags\"}].

Options:
  --cr3 HEX          the page-table root (CR3). Required for a raw or LiME dump;
                     with an ELF dump it defaults to the vCPU's CR3
  --vcpu N           take CR3 and the paging mode from vCPU N (decimal; default 0)
  --paging MODE      32, pae, 4, 5 (or off): override the paging mode. Default: the
                     vCPU's mode, or 4 for a raw dump (said on stderr)
  --maxphyaddr N     physical-address width, decimal 32..52 (default 52)
  --nxe 0|1          EFER.NXE (default 1: every 64-bit OS runs with it; an ELF
                     dump's EFER is derived, since QEMU does not record it)
  --pse 0|1          CR4.PSE for 32-bit paging (default: the vCPU's CR4, else 1)
  -v, --verbose      before each result, print the walk: one line per level with
                     the entry's address, raw value and flags. These lines start
                     with '#', so `grep -v '^#'` leaves the plain output
  --progress         show progress on stderr (default: only on a terminal, after
                     two seconds)
  --format FORMAT    read the dump as raw, elf or lime, whatever its content
  --json             JSON Lines on stdout (see above); messages stay on stderr

Exit status: 0 when every VA was well formed (unmapped ones included); 2 if a VA
was malformed (reported on stderr, skipped on stdin, fatal in arguments), the dump
cannot be opened or an option is wrong; 1 if a walk failed for a reason other than
a page fault; 3 the output could not be written (a closed pipe, a full disk).
";

    /// `introvisor read --help`.
    pub(crate) const READ: &str = "\
introvisor read: read virtual or guest-physical memory

Usage: introvisor read DUMP [--cr3 HEX] [OPTIONS] VA LEN
       introvisor read DUMP --physical [--format F] [--raw|--json] PA LEN

VA, PA and LEN are hexadecimal, with or without 0x (LEN 100 is 256 bytes).

Reads LEN bytes at VA through the page tables (or, with --physical, at the
guest-physical address PA, without translation) and prints a hex dump (address,
16 bytes in groups of two, ASCII), or with --raw writes exactly LEN bytes to
stdout, or with --json prints one JSON object:
  {\"va\": \"0x..\", \"len\": N, \"encoding\": \"hex\", \"data\": \"<2*LEN hex digits>\"}
(\"pa\" instead of \"va\" with --physical; with --base64, \"encoding\": \"base64\" and
the data in base64, RFC 4648, padded).
The whole range is checked before anything is written: if any byte is unmapped,
or mapped to memory the dump does not hold, nothing goes to stdout, stderr names
the first faulting address, and the exit status is 1. Memory is read in chunks,
so LEN may be large.

Options:
  --raw              write the bytes, not a hex dump
  --json             print a JSON object (see above)
  --base64           with --json: the data in base64, not hex
  --physical         PA is guest-physical: no page tables, no --cr3 (the paging
                     options are refused)
  --cr3, --vcpu, --paging, --maxphyaddr, --nxe, --pse, --progress, --format
                     as for 'introvisor translate --help'

Exit status: 0 success; 1 the range is not wholly mapped; 2 usage error,
malformed number, or a dump that cannot be opened;
3 the output could not be written (a closed pipe, a full disk).
";
}

/// Help texts of the Linux commands.
mod help_linux {
    /// The options every Linux command takes, for the help texts.
    macro_rules! common {
        () => {
            "
How: the kernel is found from guest memory alone, with no profile: kallsyms by its
token table, the image by its page tables, struct layouts from the kernel's BTF;
VMCOREINFO is used when the guest has one and its claims hold.

Options:
  --json             one JSON object per line (JSON Lines) instead of text
  --cr3 HEX          a CR3 of the guest, to place the kernel image (default: the
                     vCPU's, else none: the image is found by scanning)
  --vcpu N           the vCPU whose registers to use (decimal; default 0)
  --no-vmcoreinfo    ignore the guest's VMCOREINFO (find everything by scanning)
  --format FMT       raw, elf or lime: read the dump as that format

Names from the guest (comm, module, symbol and file names, the banner) are escaped
as everywhere in the tool; in JSON they are strings decoded lossily. Addresses are
\"0x...\" strings in JSON, counts and sizes numbers.

Exit status: 0 success; 1 no Linux kernel found, or a kernel list is broken (the
error names how); 2 usage error or a dump that cannot be opened.
"
        };
    }

    /// `introvisor ps --help`.
    pub(crate) const PS: &str = concat!(
        "\
introvisor ps: the processes of a Linux guest

Usage: introvisor ps DUMP [--cr3 HEX] [--json]

One line per process (thread-group leader on init_task's task list, the idle
task not included), in list order:

  <pid> <ppid> <comm> 0x<pgd>

pgd is the physical address of the process's page-table root (mm->pgd); a kernel
thread shows the kernel's (init_top_pgt). With --json also tgid, state, the
task_struct's address, user_pgd (the PTI user root, or null) and kernel_thread.
",
        common!()
    );

    /// `introvisor modules --help`.
    pub(crate) const MODULES: &str = concat!(
        "\
introvisor modules: the loaded kernel modules of a Linux guest

Usage: introvisor modules DUMP [--json]

One line per module on the kernel's `modules` list, as /proc/modules shows them:

  <name> 0x<base> <size>
",
        common!()
    );

    /// `introvisor symbols --help`.
    pub(crate) const SYMBOLS: &str = concat!(
        "\
introvisor symbols: the kernel's symbols (kallsyms) of a Linux guest

Usage: introvisor symbols DUMP [NAME...] [--json]

Every symbol, or every symbol with one of the NAMEs, in address order, in the
format of /proc/kallsyms (core kernel only):

  <address, 16 hex digits> <type> <name>

A NAME with no symbol is reported on stderr and makes the exit status 1.
",
        common!()
    );

    /// `introvisor maps --help`.
    pub(crate) const MAPS: &str = concat!(
        "\
introvisor maps: the memory regions (VMAs) of one process of a Linux guest

Usage: introvisor maps DUMP PID [--json]

One line per VMA, in address order, like /proc/PID/maps:

  <start>-<end> <rwx><p|s> <file name, empty for anonymous memory>
",
        common!()
    );

    /// `introvisor linux --help`.
    pub(crate) const LINUX: &str = concat!(
        "\
introvisor linux: what was found in a Linux guest's memory, and how

Usage: introvisor linux DUMP [--json]

One `key: value` line each: the banner and release, the paging mode, the kernel's
page-table root, _text, _end, the KASLR slide, phys_base, page_offset_base, how
the image was placed (Vmcoreinfo, Cr3 or Scan), whether PTI is on, where the
kallsyms tables are and their layout, where the BTF is and how it was found,
whether VMCOREINFO was used (or why it was rejected), the task on the vCPU, and
how long finding took. With --json one object.
",
        common!()
    );
}

/// Runs the tool on the process's arguments and standard streams, and exits with its code.
fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let stderr = io::stderr();
    let code = run(
        &args,
        Io {
            stdin: &mut io::stdin().lock(),
            stdout: &mut io::stdout().lock(),
            stderr_is_terminal: stderr.is_terminal(),
            stderr: &mut stderr.lock(),
        },
    );
    std::process::exit(code);
}

/// Runs the tool with `args` (without the program name); returns the exit code.
fn run(args: &[OsString], io: Io<'_>) -> i32 {
    let Io {
        stdin,
        stdout,
        stderr,
        stderr_is_terminal,
    } = io;
    let result = dispatch(args, stdin, stdout, stderr, stderr_is_terminal);
    let flushed = stdout.flush();
    match result.and_then(|code| flushed.map(|()| code).map_err(Failure::Output)) {
        Ok(code) => code,
        Err(failure) => report(failure, args, stderr),
    }
}

fn report(failure: Failure, args: &[OsString], stderr: &mut dyn Write) -> i32 {
    let command = args.first().and_then(|a| a.to_str()).filter(|c| {
        matches!(
            *c,
            "demo"
                | "info"
                | "translate"
                | "read"
                | "ps"
                | "modules"
                | "symbols"
                | "maps"
                | "linux"
        )
    });
    let prefix = match command {
        Some(c) => format!("introvisor {c}"),
        None => "introvisor".to_owned(),
    };
    // Messages to stderr are best effort: there is nowhere else to report. They may quote
    // a path, an argument or bytes of the dump: escaped, every one.
    match failure {
        Failure::Usage(msg) => {
            let msg = escape::escape(msg.as_bytes());
            let hint = match command {
                Some(c) => format!("introvisor {c} --help"),
                None => "introvisor --help".to_owned(),
            };
            let _ = writeln!(stderr, "{prefix}: {msg}\nTry '{hint}'.");
            EXIT_USAGE
        }
        Failure::Input(msg) => {
            let _ = writeln!(stderr, "{prefix}: {}", escape::escape(msg.as_bytes()));
            EXIT_USAGE
        }
        Failure::Fault(msg) => {
            let _ = writeln!(stderr, "{prefix}: {}", escape::escape(msg.as_bytes()));
            EXIT_FAULT
        }
        // A closed pipe (`| head`) is how a reader says it has seen enough: no message,
        // but the status says the output did not arrive whole (as SIGPIPE would).
        Failure::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OUTPUT,
        Failure::Output(e) => {
            let _ = writeln!(stderr, "{prefix}: cannot write the output: {e}");
            EXIT_OUTPUT
        }
    }
}

fn dispatch(
    args: &[OsString],
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    stderr_is_terminal: bool,
) -> Result<i32, Failure> {
    let Some(command) = args.first() else {
        stderr.write_all(help::TOP.as_bytes())?;
        return Ok(EXIT_USAGE);
    };
    let rest = args.get(1..).unwrap_or_default();
    match command.to_str() {
        Some("--help" | "-h" | "help") => {
            let text = match rest.first().and_then(|a| a.to_str()) {
                Some("demo") => help::DEMO,
                Some("info") => help::INFO,
                Some("translate") => help::TRANSLATE,
                Some("read") => help::READ,
                Some("ps") => help::PS,
                Some("modules") => help::MODULES,
                Some("symbols") => help::SYMBOLS,
                Some("maps") => help::MAPS,
                Some("linux") => help::LINUX,
                _ => help::TOP,
            };
            stdout.write_all(text.as_bytes())?;
            Ok(EXIT_OK)
        }
        Some("--version" | "-V") => {
            writeln!(stdout, "introvisor {}", env!("CARGO_PKG_VERSION"))?;
            Ok(EXIT_OK)
        }
        Some("demo") => demo::run(rest, stdout),
        Some("info") => info::run(rest, stdout),
        Some("translate") => translate::run(rest, stdin, stdout, stderr, stderr_is_terminal),
        Some("read") => read::run(rest, stdout, stderr, stderr_is_terminal),
        Some("ps") => linux::ps(rest, stdout),
        Some("modules") => linux::modules(rest, stdout),
        Some("symbols") => linux::symbols(rest, stdout, stderr),
        Some("maps") => linux::maps(rest, stdout),
        Some("linux") => linux::linux(rest, stdout),
        _ => Err(Failure::usage(format!(
            "unknown command '{}'",
            args::show(command)
        ))),
    }
}
