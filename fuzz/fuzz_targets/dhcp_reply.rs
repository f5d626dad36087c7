//! kvmos-init's DHCP client on arbitrary replies from the network. Each
//! datagram of the input (two bytes of length, then the bytes) gets the
//! transaction ID and hardware address the client asked with, as any
//! server's reply has, so the options and the state machine are reached;
//! between replies time moves on by the first byte's seconds.
#![no_main]

use kvmos_dhcp::{Action, Client};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut client = Client::new(MAC, Some("kvmos".into()), 0x1234_5678, now);
    let mut xid = [0u8; 4];
    let learn = |actions: Vec<Action>, xid: &mut [u8; 4]| {
        for a in actions {
            if let Action::Send(msg, _) = a {
                *xid = msg.xid().to_be_bytes();
            }
        }
    };
    learn(client.on_timeout(now), &mut xid);
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let mut datagram = tail[..len].to_vec();
        rest = &tail[len..];
        if datagram.len() >= 34 {
            datagram[4..8].copy_from_slice(&xid);
            datagram[28..34].copy_from_slice(&MAC);
        }
        learn(client.on_datagram(&datagram, now), &mut xid);
        now += Duration::from_secs(u64::from(datagram.first().copied().unwrap_or(1)) * 60);
        learn(client.on_timeout(now), &mut xid);
    }
});
