//! COM1 (I/O port 0x3F8), 115200 baud 8N1, polled; and the Bochs shutdown port.
//!
//! Bochs resets the line control register to 5-bit words, which garbles every byte sent
//! to the log file, so [`init`] must run before the first byte.

use core::fmt;

use crate::cpu::{halt, inb, outb};

const COM1: u16 = 0x3F8;
/// Line status register: bit 5 = transmit holding register empty, bit 6 = transmitter
/// empty (the last bit left the shift register).
const LSR: u16 = COM1 + 5;

/// Sets COM1 to 115200 baud, 8 data bits, no parity, one stop bit, FIFOs on.
pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // divisor 1 = 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1, DLAB off
    outb(COM1 + 2, 0x07); // FIFO on, both cleared
    outb(COM1 + 4, 0x03); // DTR | RTS
}

/// Sends one byte, waiting for room.
pub fn write_byte(b: u8) {
    while inb(LSR) & 0x20 == 0 {}
    outb(COM1, b);
}

/// Waits until every byte has left the UART.
pub fn drain() {
    while inb(LSR) & 0x40 == 0 {}
}

/// COM1 as a `fmt::Write`. It holds no lock: the host is single-threaded and the guest
/// writes its lines whole (see `guest::Line`), so lines never tear.
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(write_byte);
        Ok(())
    }
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Com1, $($arg)*);
    }};
}

/// Drains COM1, then asks Bochs to quit by writing `Shutdown` to port 0x8900. Bochs then
/// exits with status 1, so success is judged by the serial log, not the exit status.
pub fn shutdown() -> ! {
    drain();
    b"Shutdown".iter().for_each(|&b| outb(0x8900, b));
    halt()
}
