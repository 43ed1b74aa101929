//! Address newtypes: guest frame numbers, guest-physical and guest-virtual addresses,
//! vCPU and view identifiers, and a hexadecimal display wrapper.
//!
//! All of them are `#[repr(transparent)]` over an integer, `Copy`, and print in hex. Every
//! constructor is total: a value read from guest memory can always be wrapped, and
//! arithmetic that could overflow is offered only in checked or wrapping form.

use core::fmt;
use core::ops::{Add, Sub};

macro_rules! address_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// Wraps a raw value.
            #[inline]
            pub const fn new(value: u64) -> Self {
                Self(value)
            }

            /// The raw value.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }

            /// `self + rhs`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, rhs: u64) -> Option<Self> {
                match self.0.checked_add(rhs) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - rhs`, or `None` on underflow.
            #[inline]
            pub const fn checked_sub(self, rhs: u64) -> Option<Self> {
                match self.0.checked_sub(rhs) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self + rhs`, wrapping around at the type's boundary.
            #[inline]
            pub const fn wrapping_add(self, rhs: u64) -> Self {
                Self(self.0.wrapping_add(rhs))
            }
        }

        impl From<u64> for $name {
            #[inline]
            fn from(value: u64) -> Self {
                Self(value)
            }
        }

        impl From<$name> for u64 {
            #[inline]
            fn from(value: $name) -> u64 {
                value.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        #[cfg(feature = "defmt")]
        #[cfg_attr(docsrs, doc(cfg(feature = "defmt")))]
        impl defmt::Format for $name {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, "{=str}({=u64:#x})", stringify!($name), self.0)
            }
        }
    };
}

address_type! {
    /// A guest frame number: a guest-physical address shifted right by the page shift.
    Gfn
}

address_type! {
    /// A guest-physical address.
    Pa
}

address_type! {
    /// A guest-virtual address.
    Va
}

impl Add<u64> for Va {
    type Output = Va;

    /// Wrapping addition: virtual addresses wrap around the address space.
    #[inline]
    fn add(self, rhs: u64) -> Va {
        Va(self.0.wrapping_add(rhs))
    }
}

impl Sub<u64> for Va {
    type Output = Va;

    /// Wrapping subtraction: virtual addresses wrap around the address space.
    #[inline]
    fn sub(self, rhs: u64) -> Va {
        Va(self.0.wrapping_sub(rhs))
    }
}

impl Va {
    /// Whether this is the null address.
    #[inline]
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }
}

/// A virtual CPU index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct VcpuId(pub u16);

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vcpu{}", self.0)
    }
}

/// A view: one set of access rights and frame mappings over guest memory (as Xen's
/// altp2m). View 0 is the default view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct View(pub u16);

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "view{}", self.0)
    }
}

/// Prints the wrapped integer in hexadecimal with a `0x` prefix, in both `Debug` and
/// `Display` form. Handy for register dumps and log lines.
///
/// ```
/// use introvisor::Hex;
/// assert_eq!(format!("{}", Hex(0x1000u64)), "0x1000");
/// assert_eq!(format!("{:?}", Hex(255u8)), "0xff");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Hex<T>(pub T);

impl<T: fmt::LowerHex> fmt::Debug for Hex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl<T: fmt::LowerHex> fmt::Display for Hex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(feature = "defmt")]
#[cfg_attr(docsrs, doc(cfg(feature = "defmt")))]
impl<T: defmt::Format> defmt::Format for Hex<T> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic_never_panics() {
        assert_eq!(Pa(u64::MAX).checked_add(1), None);
        assert_eq!(Pa(0).checked_sub(1), None);
        assert_eq!(Va(u64::MAX) + 2, Va(1));
        assert_eq!(Va(0) - 1, Va(u64::MAX));
        assert_eq!(Gfn(5).checked_add(3), Some(Gfn(8)));
    }
}
