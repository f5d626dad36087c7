//! fw_cfg as SeaBIOS and OVMF drive it, by a guest that does anything: the
//! selector, the data port and DMA (whose descriptors and buffers are in
//! the guest memory the input's first part fills).
#![no_main]

#[path = "port_ops.rs"]
mod port_ops;

use kvmos_vmm::devices::fw_cfg::{FwCfg, PORT_LEN};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(4096);
    let (image, ops) = data.split_at(split);
    let mem = kvmos_vmm::vstate::memory::create(1 << 20).expect("guest memory");
    mem.write_slice(image, GuestAddress(0)).expect("fits");
    let mut f = FwCfg::new(mem, 2, 256 << 20, [7; 16]);
    f.add_file("etc/e820", vec![0; 40]).expect("a file");
    f.add_file("bootorder", b"/pci@i0cf8/scsi@3/disk@0,0\n\0".to_vec()).expect("a file");
    f.add_generated_file("etc/acpi/tables", Arc::new(|| vec![0x41; 300])).expect("a file");
    port_ops::drive(&mut f, ops, PORT_LEN);
});
