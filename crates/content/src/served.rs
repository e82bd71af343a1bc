//! What a route or resolver served, said by the code that served it. The servers carry it to
//! their observers (a TFTP transfer's summary, an HTTP response's extensions), which file
//! events and metrics by it instead of guessing from the request path.

use chainboot_machine::Mac;

/// The kind of thing served, as a boot timeline and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum What {
    /// A first-stage iPXE binary (TFTP, or HTTP for UEFI HTTP Boot).
    FirstStage,
    /// A boot script: `/boot.ipxe`, a machine's `/ipxe` script, a PXELINUX config.
    Script,
    /// A machine's kernel (its decision names it).
    Kernel,
    /// One of a machine's initrds.
    Initrd,
    /// A machine's PXELINUX loader.
    Loader,
    /// A per-machine installer file (`/config/MAC/NAME`).
    Config,
    /// A machine's own report (`POST /api/v1/machines/MAC/events`).
    Callback,
    /// A file inside an ISO image that no boot decision names.
    IsoFile,
    /// A plain file (`[http] root`, `[tftp] root`) that no boot decision names.
    #[default]
    File,
    /// The operator's API, dashboard and metrics.
    Api,
    /// Anything outside the boot namespace (a browser's `/favicon.ico`, scanners).
    Other,
}

impl What {
    /// Every kind, in [`What::index`] order.
    pub const ALL: [What; 11] = [
        What::FirstStage,
        What::Script,
        What::Kernel,
        What::Initrd,
        What::Loader,
        What::Config,
        What::Callback,
        What::IsoFile,
        What::File,
        What::Api,
        What::Other,
    ];

    /// The word events and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            What::FirstStage => "first-stage",
            What::Script => "script",
            What::Kernel => "kernel",
            What::Initrd => "initrd",
            What::Loader => "loader",
            What::Config => "config",
            What::Callback => "callback",
            What::IsoFile => "iso-file",
            What::File => "file",
            What::Api => "api",
            What::Other => "other",
        }
    }

    /// Position in [`What::ALL`] (for counters kept in arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A step of a machine's boot: what its timeline shows and what is worth an event.
    /// Plain files, ISO files no decision names, the API and strangers' paths are not.
    pub fn is_boot_step(self) -> bool {
        matches!(
            self,
            What::FirstStage
                | What::Script
                | What::Kernel
                | What::Initrd
                | What::Loader
                | What::Config
                | What::Callback
        )
    }
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was served, and for which machine when the route knows it from the request itself
/// (a MAC in the URL that the request proved it may act for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Served {
    pub what: What,
    pub mac: Option<Mac>,
}

impl Served {
    /// `what`, for no machine in particular.
    pub const fn new(what: What) -> Served {
        Served { what, mac: None }
    }

    /// `what`, for `mac`.
    pub const fn of(what: What, mac: Mac) -> Served {
        Served {
            what,
            mac: Some(mac),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_the_list_and_only_boot_steps_say_so() {
        for (i, w) in What::ALL.iter().enumerate() {
            assert_eq!(w.index(), i, "{w}");
        }
        let steps: Vec<&str> = What::ALL
            .iter()
            .filter(|w| w.is_boot_step())
            .map(|w| w.as_str())
            .collect();
        assert_eq!(
            steps,
            [
                "first-stage",
                "script",
                "kernel",
                "initrd",
                "loader",
                "config",
                "callback"
            ]
        );
    }
}
