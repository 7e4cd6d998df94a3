//! Verifying real AWS attestation documents from HCL: the `safebox_attestation` data source
//! and the `verify_attestation` and `pcr_digest` provider functions.

use safebox_acceptance_tests::{assert_refused, mentions, nitro_fixtures, text, Workspace};
use serde_json::Value;
use sha2::{Digest, Sha384};

fn fixture(name: &str) -> (Vec<u8>, Value) {
    let dir = nitro_fixtures();
    let document = std::fs::read(dir.join(format!("{name}.cbor"))).expect("fixture document");
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    (document, meta)
}

fn outputs(ws: &mut Workspace) -> Value {
    serde_json::from_str(&ws.terraform_ok(&["output", "-json"])).unwrap()
}

#[test]
fn the_data_source_verifies_a_real_document_and_refuses_a_wrong_pcr() {
    let (document, meta) = fixture("blocky_nitrite_20240907");
    let mut ws = Workspace::new();
    ws.write_file("doc.cbor", &document);
    let at = meta["verification_time"].as_str().unwrap();
    let pcr0 = meta["expected_pcr0"].as_str().unwrap();
    let config = |pcr: &str, nonce: &str| {
        format!(
            r#"
data "safebox_attestation" "doc" {{
  document_base64 = filebase64("doc.cbor")
  verify_at       = "{at}"
  expected_pcrs   = {{ "0" = "{pcr}" }}
  {nonce}
}}
output "module_id" {{ value = data.safebox_attestation.doc.module_id }}
output "pcr1"      {{ value = data.safebox_attestation.doc.pcrs["1"] }}
output "simulated" {{ value = data.safebox_attestation.doc.simulated }}
output "nonce"     {{ value = data.safebox_attestation.doc.nonce }}
"#
        )
    };
    ws.write_config("", &config(pcr0, ""));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let out = outputs(&mut ws);
    assert_eq!(out["module_id"]["value"], meta["expected_module_id"]);
    assert_eq!(out["pcr1"]["value"], meta["expected_pcr1"]);
    assert_eq!(out["simulated"]["value"], false);
    // Not required, the nonce is the document's: 1024 bytes of 0x01 in this one.
    let nonce = "01".repeat(1024);
    assert_eq!(out["nonce"]["value"], nonce.as_str());

    // Required, it is checked and kept as written; another nonce is refused.
    ws.write_config("", &config(pcr0, &format!("nonce = \"{nonce}\"")));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_eq!(outputs(&mut ws)["nonce"]["value"], nonce.as_str());
    ws.write_config("", &config(pcr0, &format!("nonce = \"{}\"", "02".repeat(1024))));
    let failed = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&failed, &["Attestation document rejected", "nonce"]);

    ws.write_config("", &config(&"00".repeat(48), ""));
    let failed = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&failed, &["Attestation document rejected", &format!("PCR0 is {pcr0}")]);
}

#[test]
fn provider_functions_verify_and_compute_pcrs() {
    let (document, meta) = fixture("evervault_nondebug_20230118");
    let mut ws = Workspace::new();
    ws.write_file("doc.cbor", &document);
    let pcr0 = meta["expected_pcr0"].as_str().unwrap();
    let measurement = hex::encode(Sha384::digest(b"kernel and ramdisks"));
    let mut expected = Sha384::new();
    expected.update([0u8; 48]);
    expected.update(Sha384::digest(b"kernel and ramdisks"));
    ws.write_config(
        "",
        &format!(
            r#"
output "verified" {{
  value = provider::safebox::verify_attestation(filebase64("doc.cbor"), {{ "0" = "{pcr0}" }})
}}
output "pcr" {{
  value = provider::safebox::pcr_digest("{measurement}")
}}
"#
        ),
    );
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let out = outputs(&mut ws);
    assert_eq!(out["verified"]["value"]["module_id"], meta["expected_module_id"]);
    assert_eq!(out["verified"]["value"]["pcrs"]["0"], pcr0);
    assert_eq!(out["pcr"]["value"], hex::encode(expected.finalize()));

    let mut tampered = document.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    ws.write_file("doc.cbor", &tampered);
    let failed = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&failed, &["signature does not verify"]);

    ws.write_config(
        "",
        "output \"pcr\" {\n  value = provider::safebox::pcr_digest(\"abc\")\n}\n",
    );
    let failed = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert!(mentions(&text(&failed), "96 hex digits"), "{}", text(&failed));
}
