//! Strings read through `VmiCore` at the edges: UTF-16 at odd addresses against an
//! unmapped page, and buffers shorter than the string.

use introvisor::{AccessContext, Pa, Va, VmiCore, VmiError};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};

const BASE: u64 = 0x0000_5555_0000_0000;
/// The last mapped page: the page after it is unmapped.
const LAST: u64 = BASE + 0x1000;

/// Two mapped pages at `BASE` (the second is `LAST`) and nothing after them, with
/// `bytes` written at `va`.
fn guest_with(va: u64, bytes: &[u8]) -> (VmiCore<HostDriver>, Pa) {
    let mut b = GuestBuilder::new(4 << 20);
    b.map_new(Va(BASE), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    b.map_new(Va(LAST), PageSize::Size4K, MapFlags::KERNEL_DATA)
        .unwrap();
    // The page after LAST is unmapped; fill LAST with non-NUL noise first.
    b.write_virtual(Va(LAST), &[0xa5; 4096]).unwrap();
    b.write_virtual(Va(va), bytes).unwrap();
    let guest = b.finish();
    (VmiCore::new(HostDriver::from_vec(guest.memory)), guest.root)
}

fn utf16(text: &str) -> (Vec<u16>, Vec<u8>) {
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
    bytes.extend_from_slice(&[0, 0]);
    (units, bytes)
}

/// Issue 13, item 9: a UTF-16 string at an odd address, whose NUL unit ends inside its
/// page, reads without touching the next page, which is unmapped. Before the fix, a chunk
/// that met the page end was rounded up to whole units, one byte into the next page,
/// and the read failed for every odd start within 63 bytes of the page end (and for a
/// longer string's last chunk there).
#[test]
fn utf16_at_an_odd_address_before_an_unmapped_page() {
    let mut checked = 0;
    for to_end in (3..=63u64).step_by(2).chain([65, 101, 127, 129, 255, 4095]) {
        // As many units as fit with the NUL unit in the page's last whole unit.
        let fit = usize::try_from((to_end - 1) / 2 - 1).unwrap();
        let text: String = "héllo wörld ∑ 0123456789"
            .chars()
            .cycle()
            .take(fit)
            .collect();
        let (units, bytes) = utf16(&text);
        assert_eq!(units.len(), fit, "BMP text: one unit a char");
        let va = LAST + 4096 - to_end;
        let (core, root) = guest_with(va, &bytes);
        let ctx = AccessContext::paging(Va(va), root);
        assert_eq!(
            core.read_wstring(ctx).unwrap(),
            text,
            "{to_end} bytes to the end"
        );
        assert_eq!(core.read_wstring_bytes(ctx).unwrap(), units);
        let mut buf = [0u16; 2048];
        assert_eq!(
            core.read_wstring_bytes_into(ctx, &mut buf).unwrap(),
            &units[..]
        );
        // The unit after the last whole one is split by the page end: with no NUL
        // before it, the read must reach into the unmapped page, and fails there.
        let noise = vec![b'A'; usize::try_from(to_end).unwrap()];
        let (core, root) = guest_with(va, &noise);
        let err = core
            .read_wstring_bytes(AccessContext::paging(Va(va), root))
            .unwrap_err();
        assert_eq!(
            err.page_fault().map(|pf| pf.va),
            Some(Va(LAST + 4096)),
            "{to_end}: {err}"
        );
        checked += 1;
    }
    assert_eq!(checked, 37);
}

/// Issue 13, item 12 (last bullet): a buffer shorter than the string is reported as
/// `BufferTooSmall`, never as a shorter string; a limit is a cap the caller chose, and
/// cuts as before; a string that fills the buffer exactly, with its NUL just after, fits.
#[test]
fn a_buffer_shorter_than_the_string_is_reported() {
    let text = b"/usr/lib/systemd/systemd-journald";
    let mut bytes = text.to_vec();
    bytes.push(0);
    let va = BASE + 4096 - 10; // across the page boundary
    let (core, root) = guest_with(va, &bytes);
    let ctx = AccessContext::paging(Va(va), root);
    let n = text.len();

    let mut short = [0u8; 16];
    assert_eq!(
        core.read_string_bytes_into(ctx, &mut short),
        Err(VmiError::BufferTooSmall)
    );
    assert_eq!(
        core.read_string_bytes_limited_into(ctx, 4096, &mut short),
        Err(VmiError::BufferTooSmall)
    );
    assert_eq!(
        core.read_string_into(ctx, &mut short),
        Err(VmiError::BufferTooSmall)
    );
    let mut empty = [0u8; 0];
    assert_eq!(
        core.read_string_bytes_into(ctx, &mut empty),
        Err(VmiError::BufferTooSmall)
    );
    // Exactly the string: its NUL is the next byte.
    let mut exact = vec![0u8; n];
    assert_eq!(core.read_string_bytes_into(ctx, &mut exact).unwrap(), text);
    let mut roomy = vec![0u8; 4 * n];
    assert_eq!(core.read_string_bytes_into(ctx, &mut roomy).unwrap(), text);
    // A limit at or below the buffer's length cuts, as the caller asked.
    assert_eq!(
        core.read_string_bytes_limited_into(ctx, 16, &mut short)
            .unwrap(),
        &text[..16]
    );
    assert_eq!(
        core.read_string_bytes_limited_into(ctx, 5, &mut roomy)
            .unwrap(),
        &text[..5]
    );
    // The allocating reads keep their names and meaning: cut at the limit.
    assert_eq!(
        core.read_string_bytes_limited(ctx, 16).unwrap(),
        &text[..16]
    );
    assert_eq!(core.read_string_bytes(ctx).unwrap(), text);

    // UTF-16: the same rules, in units.
    let (units, wbytes) = utf16("C:\\Windows\\System32\\ntoskrnl.exe");
    let (core, root) = guest_with(va + 1, &wbytes);
    let ctx = AccessContext::paging(Va(va + 1), root);
    let mut wshort = [0u16; 8];
    assert_eq!(
        core.read_wstring_bytes_into(ctx, &mut wshort),
        Err(VmiError::BufferTooSmall)
    );
    let mut wexact = vec![0u16; units.len()];
    assert_eq!(
        core.read_wstring_bytes_into(ctx, &mut wexact).unwrap(),
        &units[..]
    );
    assert_eq!(
        core.read_wstring_bytes_limited_into(ctx, 16, &mut wshort)
            .unwrap(),
        &units[..8]
    );
    assert_eq!(
        core.read_wstring_bytes_limited(ctx, 16).unwrap(),
        &units[..8]
    );
    assert_eq!(core.read_wstring_bytes(ctx).unwrap(), units);
}
