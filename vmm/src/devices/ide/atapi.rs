//! An ATAPI CD-ROM drive: the SCSI/MMC packet commands that SeaBIOS, OVMF,
//! Linux's `sr` and Windows' `cdrom.sys` send, answered from an ISO file.
//!
//! The drive knows nothing of the IDE registers: [`Cdrom::execute`] takes
//! a 12-byte packet and says what happens next ([`Outcome`]): data for the
//! host (read by the channel in as many DRQ blocks as it takes), nothing,
//! or a CHECK CONDITION whose sense data REQUEST SENSE returns. READ's
//! sectors are read from the file only as the channel asks for them, so a
//! guest's transfer length never sizes a buffer.
//!
//! The medium can be taken out and put in while the guest runs
//! ([`Cdrom::eject`], [`Cdrom::insert`]); the guest learns of it as a real
//! drive tells it: a UNIT ATTENTION on its next command, and a media event
//! for GET EVENT STATUS NOTIFICATION, which Linux polls. A guest can lock
//! the tray (PREVENT ALLOW MEDIUM REMOVAL) and eject the medium itself
//! (START STOP UNIT). QEMU's `hw/ide/atapi.c` is the reference for what
//! guests expect of each command.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes in a CD sector.
pub const SECTOR: u64 = 2048;
/// A CD's capacity in sectors; larger media are DVDs (GET CONFIGURATION).
const CD_MAX_SECTORS: u64 = 333_000;

/// SCSI sense keys.
pub mod sense {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
}

/// Additional sense codes (ASC, ASCQ).
pub mod asc {
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    pub const INVALID_FIELD: (u8, u8) = (0x24, 0x00);
    pub const MEDIUM_MAY_HAVE_CHANGED: (u8, u8) = (0x28, 0x00);
    pub const MEDIUM_NOT_PRESENT: (u8, u8) = (0x3a, 0x00);
    pub const REMOVAL_PREVENTED: (u8, u8) = (0x53, 0x02);
}

/// The packet commands the drive answers (MMC-6 opcodes).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_CAPACITY: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const SEEK_10: u8 = 0x2b;
    pub const VERIFY_10: u8 = 0x2f;
    pub const READ_TOC: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
    pub const READ_DISC_INFORMATION: u8 = 0x51;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_12: u8 = 0xa8;
    pub const SET_CD_SPEED: u8 = 0xbb;
    pub const MECHANISM_STATUS: u8 = 0xbd;
}

/// What a packet command leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done, nothing to transfer.
    Done,
    /// These bytes go to the host, then the command is done.
    Data(Vec<u8>),
    /// `count` sectors from `lba` go to the host ([`Cdrom::read_sector`]).
    Read { lba: u64, count: u64 },
    /// CHECK CONDITION; the sense is kept for REQUEST SENSE.
    Error { key: u8 },
}

/// The media event GET EVENT STATUS NOTIFICATION reports next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum MediaEvent {
    #[default]
    None = 0,
    NewMedia = 2,
    MediaRemoval = 3,
}

/// What is in the drive.
pub struct Medium {
    file: File,
    sectors: u64,
    /// What the medium was opened from, for the API and logs.
    pub name: String,
}

impl Medium {
    /// An ISO image (its size rounded down to whole sectors). Its size
    /// comes from lseek, which the event loop's seccomp filter allows (a
    /// medium changes there; fstat is not allowed).
    pub fn new(mut file: File, name: String) -> std::io::Result<Self> {
        use std::io::Seek;
        let sectors = file.seek(std::io::SeekFrom::End(0))? / SECTOR;
        Ok(Self { file, sectors, name })
    }
}

/// One CD-ROM drive.
pub struct Cdrom {
    medium: Option<Medium>,
    /// The sense of the last CHECK CONDITION (key, ASC, ASCQ).
    sense: (u8, u8, u8),
    /// A medium change the guest has not been told of by a UNIT ATTENTION.
    changed: bool,
    event: MediaEvent,
    /// The guest's PREVENT ALLOW MEDIUM REMOVAL.
    locked: bool,
    /// For INQUIRY and IDENTIFY PACKET DEVICE.
    pub serial: String,
}

impl Cdrom {
    pub fn new(medium: Option<Medium>, serial: String) -> Self {
        Self { medium, sense: (sense::NO_SENSE, 0, 0), changed: false, event: MediaEvent::None, locked: false, serial }
    }

    /// The medium's name, if one is in.
    pub fn medium(&self) -> Option<&str> {
        self.medium.as_ref().map(|m| m.name.as_str())
    }

    /// Whether the guest has locked the tray.
    pub fn locked(&self) -> bool {
        self.locked
    }

    /// Takes the medium out, as the eject button does: the host's eject
    /// overrides the guest's lock, as QEMU's `eject -f` does; the guest sees
    /// the medium go.
    pub fn eject(&mut self) -> Option<Medium> {
        let old = self.medium.take();
        if old.is_some() {
            self.changed = true;
            self.event = MediaEvent::MediaRemoval;
            self.locked = false;
        }
        old
    }

    /// Puts a medium in (any old one comes out); the guest sees a new medium.
    pub fn insert(&mut self, medium: Medium) -> Option<Medium> {
        let old = self.medium.replace(medium);
        self.changed = true;
        self.event = MediaEvent::NewMedia;
        old
    }

    /// Reads sector `lba` of the medium into `buf` ([`SECTOR`] bytes).
    /// An error (a short file, an I/O error, the medium gone) becomes a
    /// MEDIUM ERROR for the guest.
    pub fn read_sector(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), u8> {
        let result = match &self.medium {
            Some(m) if lba < m.sectors => m.file.read_exact_at(buf, lba * SECTOR).map_err(|e| {
                tracing::warn!("CD-ROM {}: cannot read sector {lba}: {e}", m.name);
            }),
            _ => Err(()),
        };
        result.map_err(|()| self.fail(sense::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR))
    }

    fn fail(&mut self, key: u8, (asc, ascq): (u8, u8)) -> u8 {
        self.sense = (key, asc, ascq);
        key
    }

    fn error(&mut self, key: u8, code: (u8, u8)) -> Outcome {
        Outcome::Error { key: self.fail(key, code) }
    }

    /// The medium's size in sectors, or the NOT READY error.
    fn sectors(&mut self) -> Result<u64, Outcome> {
        match &self.medium {
            Some(m) => Ok(m.sectors),
            None => Err(self.error(sense::NOT_READY, asc::MEDIUM_NOT_PRESENT)),
        }
    }

    /// Runs one packet command.
    pub fn execute(&mut self, packet: &[u8; 12]) -> Outcome {
        let opcode = packet[0];
        // A medium change is reported once, on the first command that is
        // not one of those a host sends to find out what happened.
        let informational = matches!(
            opcode,
            op::INQUIRY | op::REQUEST_SENSE | op::GET_CONFIGURATION | op::GET_EVENT_STATUS_NOTIFICATION
        );
        if self.changed && !informational {
            self.changed = false;
            return self.error(sense::UNIT_ATTENTION, asc::MEDIUM_MAY_HAVE_CHANGED);
        }
        if opcode != op::REQUEST_SENSE {
            self.sense = (sense::NO_SENSE, 0, 0);
        }
        let result = match opcode {
            op::TEST_UNIT_READY | op::SEEK_10 | op::VERIFY_10 => self.sectors().map(|_| Outcome::Done),
            op::REQUEST_SENSE => Ok(self.request_sense(packet)),
            op::INQUIRY => Ok(self.inquiry(packet)),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.mode_sense(packet),
            op::START_STOP_UNIT => self.start_stop(packet),
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                self.locked = packet[4] & 1 != 0;
                Ok(Outcome::Done)
            }
            op::READ_CAPACITY => self.sectors().map(|s| {
                let last = u32::try_from(s.saturating_sub(1)).unwrap_or(u32::MAX);
                Outcome::Data([last.to_be_bytes(), (SECTOR as u32).to_be_bytes()].concat())
            }),
            op::READ_10 => self.read(be32(&packet[2..6]), u64::from(be16(&packet[7..9]))),
            op::READ_12 => self.read(be32(&packet[2..6]), u64::from(be32(&packet[6..10]))),
            op::READ_TOC => self.read_toc(packet),
            op::GET_CONFIGURATION => Ok(self.configuration(packet)),
            op::GET_EVENT_STATUS_NOTIFICATION => self.event_status(packet),
            op::READ_DISC_INFORMATION => self.disc_information(packet),
            op::SET_CD_SPEED => Ok(Outcome::Done),
            op::MECHANISM_STATUS => Ok(limit(mechanism_status(self.medium.is_some()), be16(&packet[8..10]))),
            _ => Err(self.error(sense::ILLEGAL_REQUEST, asc::INVALID_OPCODE)),
        };
        result.unwrap_or_else(|e| e)
    }

    fn request_sense(&mut self, packet: &[u8; 12]) -> Outcome {
        let (key, asc, ascq) = self.sense;
        let mut d = vec![0u8; 18];
        d[0] = 0x70; // current error, fixed format
        d[2] = key;
        d[7] = 10; // additional length
        d[12] = asc;
        d[13] = ascq;
        self.sense = (sense::NO_SENSE, 0, 0);
        limit(d, u16::from(packet[4]))
    }

    fn inquiry(&mut self, packet: &[u8; 12]) -> Outcome {
        if packet[1] & 1 != 0 {
            // No vital product data pages.
            return self.error(sense::ILLEGAL_REQUEST, asc::INVALID_FIELD);
        }
        let mut d = vec![0u8; 36];
        d[0] = 0x05; // CD/DVD device
        d[1] = 0x80; // removable medium
        d[2] = 0x05; // SPC-3
        d[3] = 0x32; // ATAPI, response data format 2
        d[4] = 36 - 5;
        d[8..16].copy_from_slice(b"KVMOS   ");
        d[16..32].copy_from_slice(b"KVMOS DVD-ROM   ");
        d[32..36].copy_from_slice(b"1.0 ");
        limit(d, be16(&packet[3..5]))
    }

    fn start_stop(&mut self, packet: &[u8; 12]) -> Result<Outcome, Outcome> {
        let (load_eject, start) = (packet[4] & 2 != 0, packet[4] & 1 != 0);
        if load_eject && !start {
            if self.locked && self.medium.is_some() {
                return Err(self.error(sense::NOT_READY, asc::REMOVAL_PREVENTED));
            }
            if let Some(m) = self.medium.take() {
                tracing::info!("CD-ROM: the guest ejected {}", m.name);
                self.event = MediaEvent::MediaRemoval;
            }
        }
        Ok(Outcome::Done)
    }

    fn read(&mut self, lba: u32, count: u64) -> Result<Outcome, Outcome> {
        let sectors = self.sectors()?;
        let lba = u64::from(lba);
        if lba + count > sectors {
            return Err(self.error(sense::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE));
        }
        Ok(if count == 0 { Outcome::Done } else { Outcome::Read { lba, count } })
    }

    /// MODE SENSE: the error recovery page and the CD capabilities page
    /// (what Linux's `sr` reads to learn the drive's features).
    fn mode_sense(&mut self, packet: &[u8; 12]) -> Result<Outcome, Outcome> {
        let ten = packet[0] == op::MODE_SENSE_10;
        let (page, control) = (packet[2] & 0x3f, packet[2] >> 6);
        if control == 3 {
            // Saved values are not supported.
            return Err(self.error(sense::ILLEGAL_REQUEST, asc::INVALID_FIELD));
        }
        let error_recovery = [0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0];
        let mut capabilities = [0u8; 20];
        capabilities[0] = 0x2a;
        capabilities[1] = 18;
        capabilities[2] = 0x03; // reads CD-R and CD-RW
        capabilities[4] = 0x71; // audio play, mode 2 form 1 and 2
        capabilities[5] = 0x60; // ISRC, UPC
                                // Lock, eject, tray loading; the lock's state.
        capabilities[6] = 0x29 | if self.locked { 0x02 } else { 0 };
        capabilities[8..10].copy_from_slice(&(706u16).to_be_bytes()); // max speed, kB/s
        capabilities[10..12].copy_from_slice(&2u16.to_be_bytes()); // volume levels
        capabilities[12..14].copy_from_slice(&512u16.to_be_bytes()); // buffer, KiB
        capabilities[14..16].copy_from_slice(&(706u16).to_be_bytes()); // current speed
        let mut pages = Vec::new();
        match page {
            0x01 => pages.extend_from_slice(&error_recovery),
            0x2a => pages.extend_from_slice(&capabilities),
            0x3f => {
                pages.extend_from_slice(&error_recovery);
                pages.extend_from_slice(&capabilities);
            }
            _ => return Err(self.error(sense::ILLEGAL_REQUEST, asc::INVALID_FIELD)),
        }
        // Medium type: 0x70 is "no disc" in the old MMC table; 0x01 data CD.
        let medium_type = if self.medium.is_some() { 0x01 } else { 0x70 };
        let mut d = if ten {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&((6 + pages.len()) as u16).to_be_bytes());
            h[2] = medium_type;
            h
        } else {
            vec![(3 + pages.len()) as u8, medium_type, 0, 0]
        };
        d.extend_from_slice(&pages);
        let allocation = if ten { be16(&packet[7..9]) } else { u16::from(packet[4]) };
        Ok(limit(d, allocation))
    }

    /// READ TOC: one data track and the lead-out (format 0), or the
    /// session (format 1), in LBA or MSF form.
    fn read_toc(&mut self, packet: &[u8; 12]) -> Result<Outcome, Outcome> {
        let sectors = self.sectors()?;
        let msf = packet[1] & 2 != 0;
        let format = match packet[2] & 0x0f {
            0 => packet[9] >> 6,
            f => f,
        };
        let address = |lba: u64| -> [u8; 4] {
            if msf {
                let frames = lba + 150;
                [0, (frames / 75 / 60) as u8, (frames / 75 % 60) as u8, (frames % 75) as u8]
            } else {
                (lba as u32).to_be_bytes()
            }
        };
        let track = |number: u8, lba: u64| -> Vec<u8> {
            let mut t = vec![0, 0x14, number, 0]; // ADR 1, data track
            t.extend_from_slice(&address(lba));
            t
        };
        let mut d = match format {
            0 => {
                let start = packet[6];
                let mut d = vec![0, 0, 1, 1];
                if start <= 1 {
                    d.extend(track(1, 0));
                } else if start != 0xaa {
                    return Err(self.error(sense::ILLEGAL_REQUEST, asc::INVALID_FIELD));
                }
                d.extend(track(0xaa, sectors));
                d
            }
            1 => {
                let mut d = vec![0, 0, 1, 1];
                d.extend(track(1, 0));
                d
            }
            _ => return Err(self.error(sense::ILLEGAL_REQUEST, asc::INVALID_FIELD)),
        };
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        Ok(limit(d, be16(&packet[7..9])))
    }

    /// GET CONFIGURATION: the profile list (DVD-ROM and CD-ROM, the
    /// medium's current) and the core feature.
    fn configuration(&self, packet: &[u8; 12]) -> Outcome {
        let current = match &self.medium {
            Some(m) if m.sectors > CD_MAX_SECTORS => 0x0010u16,
            Some(_) => 0x0008,
            None => 0,
        };
        let mut d = vec![0u8; 8];
        d[6..8].copy_from_slice(&current.to_be_bytes());
        // Profile list: persistent and current, two profiles.
        d.extend_from_slice(&[0x00, 0x00, 0x03, 8]);
        for profile in [0x0010u16, 0x0008] {
            d.extend_from_slice(&profile.to_be_bytes());
            d.extend_from_slice(&[u8::from(profile == current), 0]);
        }
        // Core: ATAPI physical interface.
        d.extend_from_slice(&[0x00, 0x01, 0x03, 4, 0, 0, 0, 2]);
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        limit(d, be16(&packet[7..9]))
    }

    /// GET EVENT STATUS NOTIFICATION, polled: the media class only. The
    /// event is reported once.
    fn event_status(&mut self, packet: &[u8; 12]) -> Result<Outcome, Outcome> {
        if packet[1] & 1 == 0 {
            // Asynchronous notification is not supported.
            return Err(self.error(sense::ILLEGAL_REQUEST, asc::INVALID_FIELD));
        }
        const MEDIA_CLASS: u8 = 1 << 4;
        let mut d = vec![0, 0, 0, MEDIA_CLASS];
        if packet[4] & MEDIA_CLASS != 0 {
            d[2] = 4; // media class
            let status = u8::from(self.medium.is_some()) << 1;
            d.extend_from_slice(&[self.event as u8, status, 0, 0]);
            self.event = MediaEvent::None;
        } else {
            d[2] = 0x80; // no event available
        }
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        Ok(limit(d, be16(&packet[7..9])))
    }

    fn disc_information(&mut self, packet: &[u8; 12]) -> Result<Outcome, Outcome> {
        self.sectors()?;
        if packet[1] & 7 != 0 {
            return Err(self.error(sense::ILLEGAL_REQUEST, asc::INVALID_FIELD));
        }
        let mut d = vec![0u8; 34];
        d[1] = 32;
        d[2] = 0x0e; // complete disc, last session complete
        d[3] = 1; // first track
        d[4] = 1; // sessions
        d[5] = 1; // first track of the last session
        d[6] = 1; // last track of the last session
        Ok(limit(d, be16(&packet[7..9])))
    }
}

fn mechanism_status(present: bool) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[5] = u8::from(present);
    d
}

/// The reply cut to the host's allocation length.
fn limit(mut d: Vec<u8>, allocation: u16) -> Outcome {
    d.truncate(usize::from(allocation));
    if d.is_empty() {
        Outcome::Done
    } else {
        Outcome::Data(d)
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn medium(sectors: u64) -> Medium {
        let mut f = tempfile::tempfile().unwrap();
        for s in 0..sectors {
            f.write_all(&[s as u8; SECTOR as usize]).unwrap();
        }
        Medium::new(f, format!("{sectors}.iso")).unwrap()
    }

    fn packet(bytes: &[u8]) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[..bytes.len()].copy_from_slice(bytes);
        p
    }

    fn sense_of(d: &mut Cdrom) -> (u8, u8, u8) {
        match d.execute(&packet(&[op::REQUEST_SENSE, 0, 0, 0, 18])) {
            Outcome::Data(s) => (s[2], s[12], s[13]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_and_capacity_come_from_the_medium() {
        let mut d = Cdrom::new(Some(medium(3)), "cd0".into());
        assert_eq!(d.execute(&packet(&[op::TEST_UNIT_READY])), Outcome::Done);
        assert_eq!(
            d.execute(&packet(&[op::READ_CAPACITY])),
            Outcome::Data(vec![0, 0, 0, 2, 0, 0, 8, 0]),
            "last LBA 2, 2048-byte blocks"
        );
        assert_eq!(d.execute(&packet(&[op::READ_10, 0, 0, 0, 0, 1, 0, 0, 2])), Outcome::Read { lba: 1, count: 2 });
        let mut buf = [0u8; 2048];
        d.read_sector(2, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 2));
        assert_eq!(d.execute(&packet(&[op::READ_12, 0, 0, 0, 0, 2, 0, 0, 0, 1])), Outcome::Read { lba: 2, count: 1 });
        // Past the end: ILLEGAL REQUEST, LBA out of range.
        let past = d.execute(&packet(&[op::READ_10, 0, 0, 0, 0, 2, 0, 0, 2]));
        assert_eq!(past, Outcome::Error { key: sense::ILLEGAL_REQUEST });
        assert_eq!(sense_of(&mut d), (sense::ILLEGAL_REQUEST, 0x21, 0));
        assert_eq!(sense_of(&mut d), (sense::NO_SENSE, 0, 0), "REQUEST SENSE clears the sense");
        // A huge transfer length is refused by the range check, never sized.
        let huge = d.execute(&packet(&[op::READ_12, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(huge, Outcome::Error { key: sense::ILLEGAL_REQUEST });
        assert!(d.read_sector(3, &mut buf).is_err(), "past the medium");
    }

    #[test]
    fn an_empty_drive_is_not_ready_with_no_medium() {
        let mut d = Cdrom::new(None, "cd0".into());
        assert_eq!(d.execute(&packet(&[op::TEST_UNIT_READY])), Outcome::Error { key: sense::NOT_READY });
        assert_eq!(sense_of(&mut d), (sense::NOT_READY, 0x3a, 0));
        assert_eq!(d.execute(&packet(&[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1])), Outcome::Error { key: 2 });
        // INQUIRY works without a medium: a removable CD/DVD device.
        let Outcome::Data(inq) = d.execute(&packet(&[op::INQUIRY, 0, 0, 0, 36])) else { panic!() };
        assert_eq!((inq[0], inq[1], inq.len()), (0x05, 0x80, 36));
    }

    #[test]
    fn a_medium_change_is_a_unit_attention_once_and_a_media_event() {
        let mut d = Cdrom::new(Some(medium(2)), "cd0".into());
        let events = packet(&[op::GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8]);
        assert_eq!(d.execute(&events), Outcome::Data(vec![0, 6, 4, 0x10, 0, 2, 0, 0]), "no event, medium present");
        d.eject();
        assert_eq!(d.execute(&events), Outcome::Data(vec![0, 6, 4, 0x10, 3, 0, 0, 0]), "media removal");
        assert_eq!(d.execute(&events), Outcome::Data(vec![0, 6, 4, 0x10, 0, 0, 0, 0]), "reported once");
        assert_eq!(d.execute(&packet(&[op::TEST_UNIT_READY])), Outcome::Error { key: sense::UNIT_ATTENTION });
        assert_eq!(sense_of(&mut d), (sense::UNIT_ATTENTION, 0x28, 0));
        assert_eq!(d.execute(&packet(&[op::TEST_UNIT_READY])), Outcome::Error { key: sense::NOT_READY });
        d.insert(medium(5));
        assert_eq!(d.execute(&events), Outcome::Data(vec![0, 6, 4, 0x10, 2, 2, 0, 0]), "new media");
        assert_eq!(d.execute(&packet(&[op::READ_CAPACITY])), Outcome::Error { key: sense::UNIT_ATTENTION });
        assert_eq!(d.execute(&packet(&[op::READ_CAPACITY])), Outcome::Data(vec![0, 0, 0, 4, 0, 0, 8, 0]));
        assert_eq!(d.medium(), Some("5.iso"));
    }

    #[test]
    fn the_guest_locks_and_ejects_the_tray() {
        let mut d = Cdrom::new(Some(medium(2)), "cd0".into());
        let eject = packet(&[op::START_STOP_UNIT, 0, 0, 0, 0x02]);
        assert_eq!(d.execute(&packet(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1])), Outcome::Done);
        assert!(d.locked());
        assert_eq!(d.execute(&eject), Outcome::Error { key: sense::NOT_READY });
        assert_eq!(sense_of(&mut d), (sense::NOT_READY, 0x53, 0x02));
        assert!(d.medium().is_some());
        d.execute(&packet(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0]));
        assert_eq!(d.execute(&eject), Outcome::Done);
        assert!(d.medium().is_none());
        // The host's eject overrides the lock.
        let mut d = Cdrom::new(Some(medium(2)), "cd0".into());
        d.execute(&packet(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1]));
        assert!(d.eject().is_some());
        assert!(!d.locked());
    }

    #[test]
    fn toc_configuration_and_mode_pages_describe_a_data_disc() {
        let mut d = Cdrom::new(Some(medium(300)), "cd0".into());
        let Outcome::Data(toc) = d.execute(&packet(&[op::READ_TOC, 0, 0, 0, 0, 0, 0, 0x03, 0x24])) else { panic!() };
        assert_eq!(toc.len(), 20);
        assert_eq!(&toc[..4], &[0, 18, 1, 1]);
        assert_eq!(&toc[4..8], &[0, 0x14, 1, 0], "track 1, data");
        assert_eq!(&toc[12..16], &[0, 0x14, 0xaa, 0], "the lead-out");
        assert_eq!(&toc[16..20], &300u32.to_be_bytes());
        let Outcome::Data(msf) = d.execute(&packet(&[op::READ_TOC, 2, 0, 0, 0, 0, 0, 0, 0x24])) else { panic!() };
        assert_eq!(&msf[16..20], &[0, 0, 6, 0], "300 + 150 frames = 0:06:00");
        let Outcome::Data(conf) = d.execute(&packet(&[op::GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 0xff])) else {
            panic!()
        };
        assert_eq!(&conf[6..8], &[0, 8], "current profile: CD-ROM");
        assert_eq!(u32::from_be_bytes(conf[..4].try_into().unwrap()) as usize, conf.len() - 4);
        let Outcome::Data(mode) = d.execute(&packet(&[op::MODE_SENSE_10, 0, 0x2a, 0, 0, 0, 0, 0, 0xff])) else {
            panic!()
        };
        assert_eq!((mode[8], mode[9]), (0x2a, 18));
        assert_eq!(usize::from(u16::from_be_bytes([mode[0], mode[1]])), mode.len() - 2);
        assert_eq!(
            d.execute(&packet(&[op::MODE_SENSE_10, 0, 0x05, 0, 0, 0, 0, 0, 0xff])),
            Outcome::Error { key: sense::ILLEGAL_REQUEST }
        );
        // Allocation lengths cut replies.
        assert_eq!(d.execute(&packet(&[op::INQUIRY, 0, 0, 0, 5])), Outcome::Data(vec![5, 0x80, 5, 0x32, 31]));
        assert_eq!(d.execute(&packet(&[op::INQUIRY, 0, 0, 0, 0])), Outcome::Done);
        // An unknown command.
        assert_eq!(d.execute(&packet(&[0xff])), Outcome::Error { key: sense::ILLEGAL_REQUEST });
        assert_eq!(sense_of(&mut d), (sense::ILLEGAL_REQUEST, 0x20, 0));
    }
}
