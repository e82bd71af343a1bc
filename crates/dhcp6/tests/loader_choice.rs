//! The loader choice over DHCPv6, as packet traces without sockets: a UEFI PXEv6 or HTTPv6
//! client whose loader (the boot policy's answer, here a chooser that knows one MAC) is a
//! signed chain gets the signed file's URL in option 59, the others keep iPXE.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;
use std::time::SystemTime;

use chainboot_dhcp::boot::{ChooseLoader, LoaderChoice, PacketFacts};
use chainboot_dhcp::BootSettings;
use chainboot_dhcp6::client::Client6;
use chainboot_dhcp6::duid::eui64_link_local;
use chainboot_dhcp6::wire::{code, Options};
use chainboot_dhcp6::{Dhcp6Config, Engine6, Ingress6};
use chainboot_machine::{Arch, Loader, Mac};

const SIGNED: Mac = Mac([0x52, 0x54, 0x00, 0x00, 0x60, 0x01]);
const PLAIN: Mac = Mac([0x52, 0x54, 0x00, 0x00, 0x60, 0x02]);

/// The policy's part, reduced to what the engine asks: one machine's group says `loader`.
struct OneMachine(Loader);

impl ChooseLoader for OneMachine {
    fn loader(&self, facts: &PacketFacts, _arch: Arch) -> Option<(Loader, String)> {
        (facts.mac == Some(SIGNED)).then(|| (self.0, "group sb".to_string()))
    }
}

fn engine(loader: Loader) -> Engine6 {
    let cfg: Dhcp6Config = toml::from_str(
        "mode = \"server\"\n[[subnet]]\nprefix = \"2001:db8:60::/64\"\n\
         pools = [[\"2001:db8:60::100\", \"2001:db8:60::1ff\"]]\n",
    )
    .unwrap();
    let boot = BootSettings {
        loaders: LoaderChoice {
            chooser: Some(Arc::new(OneMachine(loader))),
            ..Default::default()
        },
        ..Default::default()
    };
    Engine6::new(
        cfg,
        boot,
        vec![0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
    )
}

/// Option 59 of the engine's answer to a Solicit from `mac`'s firmware (a DUID-LL, sent from
/// its EUI-64 link-local address), PXE or HTTP Boot.
fn option_59(e: &mut Engine6, mac: Mac, http_boot: bool) -> String {
    let server: Ipv6Addr = "2001:db8:60::1".parse().unwrap();
    let ingress = Ingress6 {
        ifindex: 2,
        iface: "boot0".into(),
        local: vec![server],
        dst: "ff02::1:2".parse().unwrap(),
        local_port: 547,
        src: SocketAddrV6::new(eui64_link_local(mac), 546, 0, 2),
    };
    let duid = [&[0u8, 3, 0, 1][..], &mac.0].concat();
    let arch = if http_boot { 16 } else { 7 };
    let solicit = Client6::firmware(duid, arch, http_boot).solicit();
    let handled = e.handle(SystemTime::now(), &ingress, &solicit);
    let reply = handled.outgoing.first().expect("an Advertise");
    let opts = Options::parse(&reply.bytes[4..]).unwrap();
    String::from_utf8(opts.get(code::BOOTFILE_URL).expect("option 59").to_vec()).unwrap()
}

#[test]
fn a_signed_loader_reaches_pxev6_firmware_as_a_tftp_url_and_the_others_keep_ipxe() {
    let mut e = engine(Loader::Grub);
    assert_eq!(
        option_59(&mut e, SIGNED, false),
        "tftp://[2001:db8:60::1]/secureboot/shimx64.efi"
    );
    assert_eq!(
        option_59(&mut e, PLAIN, false),
        "tftp://[2001:db8:60::1]/snponly.efi"
    );
    let mut e = engine(Loader::IpxeShim);
    assert_eq!(
        option_59(&mut e, SIGNED, false),
        "tftp://[2001:db8:60::1]/secureboot/snponly-shimx64.efi"
    );
}

#[test]
fn http_boot_over_ipv6_gets_ipxes_signed_shim_by_url_and_never_grub() {
    let mut e = engine(Loader::IpxeShim);
    assert_eq!(
        option_59(&mut e, SIGNED, true),
        "http://[2001:db8:60::1]/ipxe-bin/secureboot/snponly-shimx64.efi"
    );
    // The signed GRUB fetches over TFTP only: an HTTP Boot client whose loader is grub gets
    // iPXE rather than a chain that cannot load its config.
    let mut e = engine(Loader::Grub);
    assert_eq!(
        option_59(&mut e, SIGNED, true),
        "http://[2001:db8:60::1]/ipxe-bin/snponly.efi"
    );
}
