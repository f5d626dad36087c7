//! The VM's display: QEMU's standard VGA ([`stdvga`]), whose VGA core
//! ([`vga`]) keeps text and legacy graphics modes and whose Bochs VBE
//! registers set the linear framebuffer modes, in video memory ([`vram`])
//! that the guest also sees directly through a KVM memory slot.
//!
//! What the guest shows is rendered into a [`Frame`] for the VNC server
//! and for screenshots.

pub mod stdvga;
pub mod vga;
pub mod vram;

pub use kvmos_rfb::frame::Frame;

/// Where the display changed since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing the guest did can have changed the picture.
    None,
    /// These framebuffer rows (first, count) may have changed.
    Rows(u32, u32),
    /// Anything may have changed (mode, palette, text).
    All,
}
