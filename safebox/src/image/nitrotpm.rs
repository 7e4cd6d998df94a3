//! NitroTPM PCR4, PCR7 and PCR12 of a UKI disk, predicted before anything boots.
//!
//! A PCR starts as 48 zero bytes; each event extends it: `PCR = SHA-384(PCR || digest)`. The
//! events are those of the TCG PC Client Platform Firmware Profile (PFP) specification, for a
//! *standard boot* (Secure Boot off) of a disk whose EFI System Partition holds the UKI as
//! `\EFI\BOOT\BOOTX64.EFI`, started by the firmware's boot manager without load options:
//!
//! PCR4 (PFP §3.3.4.5, boot manager code and boot attempts):
//! 1. `EV_EFI_ACTION` "Calling EFI Application from Boot Option": SHA-384 of those 40 ASCII
//!    bytes, no NUL.
//! 2. `EV_SEPARATOR` at the first Ready To Boot: SHA-384 of four zero bytes.
//! 3. `EV_EFI_BOOT_SERVICES_APPLICATION` for the UKI: its Authenticode SHA-384
//!    ([`super::pe`]).
//! 4. `EV_EFI_BOOT_SERVICES_APPLICATION` for the kernel: systemd-stub 252 to 257 start the
//!    `.linux` section through the firmware's `LoadImage`, which measures it like any image
//!    (its Authenticode SHA-384, the signature left out). From 258 the stub starts the kernel
//!    itself and the firmware never sees it (AWS's `nitro-tpm-pcr-compute` makes the same
//!    distinction, citing systemd pull request 37372).
//!
//! PCR7 (PFP §3.3.4.8, Secure Boot policy), with Secure Boot off and no keys enrolled:
//! 1. `EV_EFI_VARIABLE_DRIVER_CONFIG` for `SecureBoot` (EFI global variable GUID) holding
//!    one byte, 0.
//! 2. -5. The same for `PK`, `KEK` (global GUID), `db`, `dbx` (image security database GUID),
//!    each empty.
//! 6. `EV_SEPARATOR`.
//!
//! Each variable event's digest is SHA-384 of `UEFI_VARIABLE_DATA`: the GUID (16 bytes, first
//! three fields little-endian), the name's length in UTF-16 units (u64 LE), the data's length
//! in bytes (u64 LE), the name in UTF-16LE without terminator, the data. No
//! `EV_EFI_VARIABLE_AUTHORITY` follows: nothing is verified with Secure Boot off.
//!
//! PCR12: nothing. systemd-stub extends PCR12 only with a command line passed as load options
//! (the boot manager passes none and the stub uses `.cmdline`), credentials
//! (`\loader\credentials`, `<uki>.extra.d`) and, from 254, add-ons; the ESP holds none of these.
//! So PCR12 stays 48 zero bytes, as AWS publishes it for standard boot.
//!
//! # OVMF under QEMU and EC2's NitroTPM
//!
//! The integration test `uki_boot` boots both variants' disks under QEMU (q35, Debian's OVMF
//! 2022.11 without Secure Boot, swtpm TPM 2.0) and compares these predictions with
//! `/sys/class/tpm/tpm0/pcr-sha384/{4,7,12}` read in the guest. OVMF's event log there
//! holds exactly the events above for PCR4, PCR7 and PCR12, in this order: OVMF records the
//! `SecureBoot` variable as one zero byte even in a build without Secure Boot support, as
//! EC2's firmware does. The same sequences are what AWS's `nitro-tpm-pcr-compute`
//! computes for EC2 standard boot (PCR4: action, separator, UKI, kernel for stubs before 258;
//! PCR7: the five variables and a separator; PCR12: zero). Two things would make EC2 differ:
//! a second boot attempt (the boot manager then adds "Returning from EFI Application from Boot
//! Option" and another call to PCR4; QEMU's disk is the first and only boot option, an AMI's
//! root volume likewise), and Secure Boot keys enrolled in the AMI's UEFI variable store
//! (then PCR7 holds them and an authority event), which these images do not set.

use openssl::sha::Sha384;

/// A SHA-384 PCR value or event digest.
pub type Digest384 = [u8; 48];

/// The ASCII string of the boot-attempt action event (PFP §3.3.4.5).
pub const CALLING_EFI_APPLICATION: &str = "Calling EFI Application from Boot Option";
/// `EFI_GLOBAL_VARIABLE` 8BE4DF61-93CA-11D2-AA0D-00E098032B8C, as stored (first three fields LE).
const EFI_GLOBAL_VARIABLE: [u8; 16] = [
    0x61, 0xDF, 0xE4, 0x8B, 0xCA, 0x93, 0xD2, 0x11, 0xAA, 0x0D, 0x00, 0xE0, 0x98, 0x03, 0x2B, 0x8C,
];
/// `EFI_IMAGE_SECURITY_DATABASE_GUID` D719B2CB-3D3A-4596-A3BC-DAD00E67656F, as stored.
const IMAGE_SECURITY_DATABASE: [u8; 16] = [
    0xCB, 0xB2, 0x19, 0xD7, 0x3A, 0x3D, 0x96, 0x45, 0xA3, 0xBC, 0xDA, 0xD0, 0x0E, 0x67, 0x65, 0x6F,
];
/// The first systemd-stub version that starts the kernel without the firmware's `LoadImage`.
pub const STUB_LOADS_KERNEL_ITSELF_FROM: u32 = 258;

/// One measured event, as the firmware or the stub records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `EV_EFI_ACTION`: the digest of an ASCII string.
    EfiAction(&'static str),
    /// `EV_SEPARATOR`: the digest of four zero bytes.
    Separator,
    /// `EV_EFI_BOOT_SERVICES_APPLICATION`: an image's Authenticode digest.
    BootServicesApplication(Digest384),
    /// `EV_EFI_VARIABLE_DRIVER_CONFIG`: a UEFI variable's GUID, name and data.
    VariableDriverConfig {
        /// The vendor GUID as stored.
        guid: [u8; 16],
        /// The variable's name.
        name: &'static str,
        /// Its data.
        data: Vec<u8>,
    },
}

impl Event {
    /// The digest the event extends its PCR with.
    #[must_use]
    pub fn digest(&self) -> Digest384 {
        let mut h = Sha384::new();
        match self {
            Self::EfiAction(text) => h.update(text.as_bytes()),
            Self::Separator => h.update(&[0; 4]),
            Self::BootServicesApplication(digest) => return *digest,
            Self::VariableDriverConfig { guid, name, data } => {
                let units: Vec<u16> = name.encode_utf16().collect();
                h.update(guid);
                h.update(&(units.len() as u64).to_le_bytes());
                h.update(&(data.len() as u64).to_le_bytes());
                for unit in units {
                    h.update(&unit.to_le_bytes());
                }
                h.update(data);
            }
        }
        h.finish()
    }
}

/// A PCR after `events`, starting from zero.
#[must_use]
pub fn replay(events: &[Event]) -> Digest384 {
    events.iter().fold([0; 48], |pcr, event| {
        let mut h = Sha384::new();
        h.update(&pcr);
        h.update(&event.digest());
        h.finish()
    })
}

/// The PCR4 events of booting a UKI whose Authenticode digest is `uki`; `kernel` is the
/// `.linux` image's Authenticode digest when the firmware measures it (stub before 258).
#[must_use]
pub fn pcr4_events(uki: Digest384, kernel: Option<Digest384>) -> Vec<Event> {
    let mut events = vec![
        Event::EfiAction(CALLING_EFI_APPLICATION),
        Event::Separator,
        Event::BootServicesApplication(uki),
    ];
    events.extend(kernel.map(Event::BootServicesApplication));
    events
}

/// The PCR7 events with Secure Boot off and no keys enrolled.
#[must_use]
pub fn pcr7_events() -> Vec<Event> {
    let variable = |guid, name, data: &[u8]| Event::VariableDriverConfig {
        guid,
        name,
        data: data.to_vec(),
    };
    vec![
        variable(EFI_GLOBAL_VARIABLE, "SecureBoot", &[0]),
        variable(EFI_GLOBAL_VARIABLE, "PK", &[]),
        variable(EFI_GLOBAL_VARIABLE, "KEK", &[]),
        variable(IMAGE_SECURITY_DATABASE, "db", &[]),
        variable(IMAGE_SECURITY_DATABASE, "dbx", &[]),
        Event::Separator,
    ]
}

/// PCR4, PCR7 and PCR12 of a standard boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NitroTpmPcrs {
    /// Boot manager code: the UKI and, for stubs before 258, the kernel.
    pub pcr4: Digest384,
    /// Secure Boot policy.
    pub pcr7: Digest384,
    /// Kernel parameters passed to the stub: none.
    pub pcr12: Digest384,
}

impl NitroTpmPcrs {
    /// The PCRs of booting a UKI with Authenticode digest `uki`, made from a stub of major
    /// version `stub_major` whose `.linux` image has Authenticode digest `kernel`.
    #[must_use]
    pub fn predict(uki: Digest384, kernel: Digest384, stub_major: u32) -> Self {
        let kernel = (stub_major < STUB_LOADS_KERNEL_ITSELF_FROM).then_some(kernel);
        Self {
            pcr4: replay(&pcr4_events(uki, kernel)),
            pcr7: replay(&pcr7_events()),
            pcr12: replay(&[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex48(text: &str) -> Digest384 {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    /// Digests read from a real event log: `/sys/kernel/security/tpm0/binary_bios_measurements`
    /// after Debian's OVMF 2022.11-6+deb12u2 (no Secure Boot) booted a UKI of systemd-stub
    /// 252.39 and Debian's kernel 6.1.0-57 under QEMU with swtpm, and the PCRs the guest read.
    #[test]
    fn event_digests_and_pcrs_match_a_recorded_ovmf_event_log() {
        let expect = |event: &Event, digest: &str| assert_eq!(hex::encode(event.digest()), digest, "{event:?}");
        expect(
            &Event::EfiAction(CALLING_EFI_APPLICATION),
            "77a0dab2312b4e1e57a84d865a21e5b2ee8d677a21012ada819d0a98988078d3d740f6346bfe0abaa938ca20439a8d71",
        );
        expect(
            &Event::Separator,
            "394341b7182cd227c5c6b07ef8000cdfd86136c4292b8e576573ad7ed9ae41019f5818b4b971c9effc60e1ad9f1289f0",
        );
        let recorded_variables = [
            "cfa4e2c606f572627bf06d5669cc2ab1128358d27b45bc63ee9ea56ec109cfafb7194006f847a6a74b5eaed6b73332ec",
            "6f2e3cbc14f9def86980f5f66fd85e99d63e69a73014ed8a5633ce56eca5b64b692108c56110e22acadcef58c3250f1b",
            "d607c0efb41c0d757d69bca0615c3a9ac0b1db06c557d992e906c6b7dee40e0e031640c7bfd7bcd35844ef9edeadc6f9",
            "08a74f8963b337acb6c93682f934496373679dd26af1089cb4eaf0c30cf260a12e814856385ab8843e56a9acea19e127",
            "18cc6e01f0c6ea99aa23f8a280423e94ad81d96d0aeb5180504fc0f7a40cb3619dd39bd6a95ec1680a86ed6ab0f9828d",
        ];
        for (event, digest) in pcr7_events().iter().zip(recorded_variables) {
            expect(event, digest);
        }
        // The SecureBoot event's data, byte for byte as logged.
        let Event::VariableDriverConfig { guid, .. } = &pcr7_events()[0] else {
            panic!("SecureBoot is a variable event")
        };
        assert_eq!(hex::encode(guid), "61dfe48bca93d211aa0d00e098032b8c");

        let pcrs = NitroTpmPcrs::predict(
            hex48("88e49625211b2397a9ce6b946124ebcf78d6128ab40ce623b514663f9f7a81d08720def4642dd0c9f0bf7947e3b2438b"),
            hex48("81fb42fef95923991e78f9cace4303dfeb093b59fa22cc04bfe295df738df2f576c5f28dfc802a0f3cf1db71151e5f16"),
            252,
        );
        assert_eq!(
            hex::encode(pcrs.pcr4),
            "ebe6eb226f7277c120b59d850d645690e81552d0aa978fcc9b59ccd80a59f5fb54bd38ed0f2d5827ff1c5b71538ec725"
        );
        assert_eq!(
            hex::encode(pcrs.pcr7),
            "98441c7f7625d10058c47683aec486ce311c633235eb555593a7ee791121e3578ae72d04ecef661f272d59058b77af35"
        );
        assert_eq!(pcrs.pcr12, [0; 48]);
    }

    #[test]
    fn stubs_from_258_leave_the_kernel_out_of_pcr4() {
        let (uki, kernel) = ([1; 48], [2; 48]);
        let old = NitroTpmPcrs::predict(uki, kernel, 257);
        let new = NitroTpmPcrs::predict(uki, kernel, 258);
        assert_eq!(old.pcr4, replay(&pcr4_events(uki, Some(kernel))));
        assert_eq!(new.pcr4, replay(&pcr4_events(uki, None)));
        assert_ne!(old.pcr4, new.pcr4);
        assert_eq!(old.pcr7, new.pcr7);
        // Extending is order-sensitive: the UKI comes before the kernel.
        assert_ne!(
            replay(&pcr4_events(uki, Some(kernel))),
            replay(&pcr4_events(kernel, Some(uki)))
        );
    }
}
