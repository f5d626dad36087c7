//! The root PCI bus: configuration mechanism #1 (CONFIG_ADDRESS at 0xCF8,
//! CONFIG_DATA at 0xCFC-0xCFF) for bus 0, and the PIIX3's reset control
//! register, which sits at 0xCF9 in the middle of CONFIG_ADDRESS.
//!
//! After every configuration write the root compares where each BAR of the
//! function decodes with where it is mapped, and moves it on the I/O or
//! MMIO bus: firmware assigns BARs, and an OS may move them again.

use super::{BarKind, PciDevice};
use crate::devices::bus::{Bus, BusDevice};
use crate::exit::{ExitReason, ExitSignal};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Ports: CONFIG_ADDRESS, the reset control register, CONFIG_DATA.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
pub const PORT_SPAN: u64 = 8;
const RESET_CONTROL_OFFSET: u64 = 1;
const DATA_OFFSET: u64 = 4;
/// RCR bit 2 starts the reset (bit 1 picks hard or soft; both reboot).
const RCR_RESET: u8 = 1 << 2;

struct Function {
    dev: Arc<Mutex<dyn PciDevice>>,
    mapped: [Option<u64>; 6],
}

pub struct PciRoot {
    address: u32,
    reset_control: u8,
    functions: BTreeMap<u8, Function>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    exit: Arc<ExitSignal>,
}

/// A placed BAR on a bus: forwards to its device.
struct BarWindow {
    dev: Arc<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).bar_read(self.bar, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).bar_write(self.bar, offset, data);
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `devfn` for device `slot`, function `func` (bus 0).
pub fn devfn(slot: u8, func: u8) -> u8 {
    (slot << 3) | (func & 7)
}

impl PciRoot {
    pub fn new(io_bus: Arc<Bus>, mmio_bus: Arc<Bus>, exit: Arc<ExitSignal>) -> Self {
        Self { address: 0, reset_control: 0, functions: BTreeMap::new(), io_bus, mmio_bus, exit }
    }

    /// Plugs a function in at `devfn` (see [`devfn`]).
    pub fn add(&mut self, devfn: u8, dev: Arc<Mutex<dyn PciDevice>>) {
        self.functions.insert(devfn, Function { dev, mapped: [None; 6] });
    }

    /// The function and register CONFIG_ADDRESS selects, if it is enabled
    /// and on bus 0.
    fn selected(&self) -> Option<(u8, usize)> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        let bus = (a >> 16) & 0xff;
        (enabled && bus == 0).then_some((((a >> 8) & 0xff) as u8, (a & 0xfc) as usize))
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        let Some((devfn, reg)) = self.selected() else {
            data.fill(0xff);
            return;
        };
        match self.functions.get(&devfn) {
            Some(f) => lock(&f.dev).read_config(reg + (offset - DATA_OFFSET) as usize, data),
            None => data.fill(0xff),
        }
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) {
        let Some((devfn, reg)) = self.selected() else { return };
        let Some(f) = self.functions.get_mut(&devfn) else { return };
        let at = reg + (offset - DATA_OFFSET) as usize;
        let mut moves = Vec::new();
        {
            let mut dev = lock(&f.dev);
            dev.config_mut().write(at, data);
            dev.config_written(at, data.len());
            for bar in 0..6 {
                let Some(kind) = dev.config().bar(bar).map(|b| b.kind) else { continue };
                let now = dev.config().bar_address(bar);
                if now != f.mapped[bar] {
                    let size = dev.config().bar(bar).map(|b| b.size).unwrap_or(0);
                    moves.push((bar, kind, size, f.mapped[bar], now));
                    dev.bar_moved(bar, now);
                }
            }
        }
        for (bar, kind, size, old, new) in moves {
            let bus = if kind == BarKind::Io { &self.io_bus } else { &self.mmio_bus };
            if let Some(old) = old {
                bus.remove(old);
            }
            f.mapped[bar] = None;
            if let Some(new) = new {
                let window = Arc::new(Mutex::new(BarWindow { dev: Arc::clone(&f.dev), bar }));
                match bus.insert(new, size, window) {
                    Ok(()) => f.mapped[bar] = Some(new),
                    Err(e) => {
                        tracing::warn!("PCI {:02x}.{}: BAR{bar} at {new:#x} not mapped: {e}", devfn >> 3, devfn & 7)
                    }
                }
            }
        }
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (RESET_CONTROL_OFFSET, 1) => data[0] = self.reset_control,
            (DATA_OFFSET.., _) => self.config_read(offset, data),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            (RESET_CONTROL_OFFSET, 1) => {
                if data[0] & RCR_RESET != 0 {
                    self.exit.request(ExitReason::Reboot);
                }
                self.reset_control = data[0] & 0x02;
            }
            (DATA_OFFSET.., _) => self.config_write(offset, data),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::config_space::{ConfigSpace, Identity, BAR0};
    use crate::devices::pci::{COMMAND, COMMAND_IO, COMMAND_MEMORY};

    struct Dev {
        config: ConfigSpace,
        scratch: [u8; 4],
        moved: Vec<(usize, Option<u64>)>,
    }

    impl PciDevice for Dev {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.copy_from_slice(&self.scratch[offset as usize..offset as usize + data.len()]);
        }
        fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            self.scratch[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
        fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
            self.moved.push((bar, addr));
        }
    }

    fn cfg_addr(devfn: u8, reg: u32) -> [u8; 4] {
        (0x8000_0000u32 | (u32::from(devfn) << 8) | reg).to_le_bytes()
    }

    #[test]
    fn config_cycles_reach_the_function_and_bars_follow_the_guest() {
        let io = Arc::new(Bus::default());
        let mmio = Arc::new(Bus::default());
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut root = PciRoot::new(Arc::clone(&io), Arc::clone(&mmio), Arc::clone(&exit));
        let mut config = ConfigSpace::new(Identity {
            vendor: 0x1234,
            device: 0x5678,
            revision: 0,
            class: [0xff, 0, 0],
            subsystem_vendor: 0,
            subsystem: 0,
            multifunction: false,
            interrupt_pin: 0,
        });
        config.add_bar(0, BarKind::Mem32, 0x1000);
        config.add_bar(1, BarKind::Io, 0x10);
        let dev = Arc::new(Mutex::new(Dev { config, scratch: [0; 4], moved: vec![] }));
        root.add(devfn(3, 0), dev.clone());

        let mut b = [0u8; 4];
        root.write(0, &cfg_addr(devfn(3, 0), 0));
        root.read(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
        // A 16-bit read of the device ID at 0xCFE.
        let mut w = [0u8; 2];
        root.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x5678);
        // Nothing at slot 4.
        root.write(0, &cfg_addr(devfn(4, 0), 0));
        root.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);

        root.write(0, &cfg_addr(devfn(3, 0), BAR0 as u32));
        root.write(4, &0xfe00_0000u32.to_le_bytes());
        root.write(0, &cfg_addr(devfn(3, 0), BAR0 as u32 + 4));
        root.write(4, &0xc000u32.to_le_bytes());
        root.write(0, &cfg_addr(devfn(3, 0), COMMAND as u32));
        root.write(4, &[(COMMAND_MEMORY | COMMAND_IO) as u8, 0]);
        assert!(mmio.write(0xfe00_0002, &[0xab]));
        let mut one = [0u8; 1];
        assert!(io.read(0xc002, &mut one));
        assert_eq!(one[0], 0xab);

        // Moving BAR0 unmaps the old place.
        root.write(0, &cfg_addr(devfn(3, 0), BAR0 as u32));
        root.write(4, &0xfd00_0000u32.to_le_bytes());
        assert!(!mmio.read(0xfe00_0002, &mut one));
        assert!(mmio.read(0xfd00_0002, &mut one));
        assert_eq!(lock(&dev).moved, vec![(0, Some(0xfe00_0000)), (1, Some(0xc000)), (0, Some(0xfd00_0000))]);
    }

    #[test]
    fn the_reset_control_register_reboots() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut root = PciRoot::new(Arc::default(), Arc::default(), Arc::clone(&exit));
        root.write(RESET_CONTROL_OFFSET, &[0x02]);
        assert!(exit.reason().is_none());
        root.write(RESET_CONTROL_OFFSET, &[0x06]);
        assert_eq!(exit.reason(), Some(ExitReason::Reboot));
    }
}
