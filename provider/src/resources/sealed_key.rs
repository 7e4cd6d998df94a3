//! `safebox_sealed_key`: a KMS key released only to boxes that attest to an image's
//! measurements (aws backend).
//!
//! The key policy is computed from the image's measurements and shown in the plan, so
//! auditors review exactly what KMS will enforce; it grants nobody `kms:PutKeyPolicy`, so it
//! can never be loosened (a different binding is a new key). Refresh reads the policy back
//! from KMS: a key that was deleted or whose policy differs shows in `status` and is replaced.
//!
//! What the policy binds follows the image's format ([`KeyBinding`]): an `"eif"` image's
//! digest (`kms:RecipientAttestation:ImageSha384`) and the PCRs of `bind_pcrs` (default
//! PCR0), or a `"uki"` image's NitroTPM PCR4 and PCR12 (`kms:RecipientAttestation:NitroTPMPCR4`,
//! `NitroTPMPCR12`) and PCR7 when `bind_pcrs` names it (default `[4, 12]`). `bind_pcrs` naming
//! the other format's PCRs is refused at plan.

use std::time::Duration;

use safebox::attest::document::DocumentKind;
use safebox::cloud::{new_record_id, RecordKind, SealedKeys, Tagged};
use safebox::govern::Action;
use safebox::sealed_key::{check_principal_arn, default_recipients, KeyBinding, SealedKeySpec, NITROTPM_ALWAYS_BOUND};

use crate::config::Capability;
use crate::framework::diag::Diagnostics;
use crate::framework::model::{StringList, StringMap, Tf};
use crate::framework::modifiers::{requires_replace, use_state_for_unknown};
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, Schema, Validator};
use crate::framework::timeouts::{limit, timeouts_block, within, CreateDeleteTimeouts};
use crate::framework::types::Type;
use crate::framework::validators::{check, not_blank, one_of};
use crate::framework::value::Value;
use crate::governance::{self, attributes_digest, Change, GovernanceModel, Governor, PolicySource};
use crate::images::{self, ImageFacts};
use crate::record;
use crate::resource::{Ctx, Resource};

/// `status` of a key whose policy in KMS is the planned one.
const SEALED: &str = "sealed";
/// How long creating, or scheduling the deletion of, the KMS key may take unless `timeouts`
/// says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

crate::model! {
    /// A `safebox_sealed_key`.
    pub struct SealedKeyModel {
        /// The key's record id.
        id: Tf<String>,
        /// Its name.
        name: Tf<String>,
        /// The image whose enclaves may use it.
        image_id: Tf<String>,
        /// Which variant's measurements bind it.
        variant: Tf<String>,
        /// PCRs the recipient must match.
        bind_pcrs: Tf<Vec<Tf<i64>>>,
        /// Who administers it.
        administrator_arns: StringList,
        /// Whose attested enclaves may decrypt.
        recipient_arns: StringList,
        /// The user's tags for the KMS key.
        tags: StringMap,
        /// The key policy.
        policy: Tf<String>,
        /// The KMS key id.
        key_id: Tf<String>,
        /// The KMS key ARN.
        key_arn: Tf<String>,
        /// `sealed`, or what changed.
        status: Tf<String>,
        /// How long creating and deleting the KMS key may take.
        timeouts: Tf<CreateDeleteTimeouts>,
    }
    embed {
        /// Its governance.
        governance: GovernanceModel,
    }
}

impl SealedKeyModel {
    fn is_dev(&self) -> bool {
        self.variant.as_deref() == Some("dev")
    }
}

/// The `safebox_sealed_key` resource.
pub struct SealedKeyResource {
    schema: Schema,
}

impl Default for SealedKeyResource {
    fn default() -> Self {
        Self::new()
    }
}

fn arn_list() -> Validator {
    check(
        "IAM principal ARNs such as `arn:aws:iam::123456789012:role/Name`.",
        |value: &Value| {
            for (i, arn) in value.as_list().iter().enumerate() {
                if let Some(arn) = arn.as_str() {
                    check_principal_arn(arn).map_err(|reason| format!("[{i}]: {reason}"))?;
                }
            }
            Ok(())
        },
    )
}

fn pcr_indexes() -> Validator {
    check("PCR indexes the key policy pins.", |value: &Value| {
        let mut seen = Vec::new();
        for item in value.as_list().iter().filter(|v| v.is_fully_known()) {
            let Some(index) = item.as_i64() else {
                return Err("must hold whole numbers (PCR indexes)".into());
            };
            if u32::try_from(index).ok().and_then(DocumentKind::measuring).is_none() {
                return Err(format!(
                    "has {index}; a safebox_image measures PCR0, PCR1 and PCR2 (\"eif\") or NitroTPM PCR4, PCR7 and PCR12 (\"uki\"), so bind_pcrs may hold those"
                ));
            }
            if seen.contains(&index) {
                return Err(format!("names PCR{index} twice"));
            }
            seen.push(index);
        }
        Ok(())
    })
}

impl SealedKeyResource {
    /// Its records, and the attributes refresh recomputes (which a record may hold older).
    fn records(&self) -> record::Records<'_> {
        record::Records {
            kind: RecordKind::SealedKey,
            schema: &self.schema,
            live: &["status"],
        }
    }

    /// The resource with its schema.
    #[must_use]
    pub fn new() -> Self {
        let replace = requires_replace;
        let keep = use_state_for_unknown;
        let mut attributes = vec![
            Attribute::computed("id", Type::String).describe("The key's record id; import by it.").modify(keep()),
            Attribute::required("name", Type::String)
                .describe("The key's name (its KMS description).")
                .validate(not_blank())
                .modify(replace()),
            Attribute::required("image_id", Type::String)
                .describe("The `safebox_image` whose enclaves may use the key.")
                .validate(not_blank())
                .modify(replace()),
            Attribute::with_default("variant", Type::String, Value::string("prod"))
                .describe("Which image's measurements bind the key: `prod` (default) or `dev`.")
                .validate(one_of(&["prod", "dev"]))
                .modify(replace()),
            Attribute::optional_computed("bind_pcrs", Type::list(Type::Number))
                .describe("PCRs the recipient's attestation must match. An `\"eif\"` image: besides its digest (`kms:RecipientAttestation:ImageSha384`), any of 0, 1, 2 (`kms:RecipientAttestation:PCR<n>`), default `[0]`. A `\"uki\"` image: NitroTPM PCR4 and PCR12 always, and 7 when listed (`kms:RecipientAttestation:NitroTPMPCR<n>`), default `[4, 12]`.")
                .validate(pcr_indexes())
                .modify(keep())
                .modify(replace()),
            Attribute::required("administrator_arns", Type::list(Type::String))
                .describe("IAM principals that administer the key (describe, tag, disable, schedule deletion) and can never decrypt with it.")
                .validate(arn_list())
                .modify(replace()),
            Attribute::optional_computed("recipient_arns", Type::list(Type::String))
                .modify(keep())
                .describe("IAM principals whose attested enclaves may decrypt. Default: the root of each administrator's account, so IAM in that account decides who may ask and the key policy decides which enclave may receive.")
                .validate(arn_list())
                .modify(replace()),
            crate::tags::attribute(),
            Attribute::computed("policy", Type::String)
                .describe("The key policy (canonical JSON), known at plan once the image exists.")
                .modify(keep()),
            Attribute::computed("key_id", Type::String).describe("The KMS key id.").modify(keep()),
            Attribute::computed("key_arn", Type::String).describe("The KMS key ARN.").modify(keep()),
            Attribute::computed("status", Type::String)
                .describe("`sealed`, or why the key in KMS no longer matches (which replaces it).")
                .modify(replace()),
        ];
        attributes.extend(governance::attributes(PolicySource::Inherited));
        let block = Block::new(attributes)
            .with_blocks(vec![timeouts_block(
                &["create", "delete"],
                "How long creating the KMS key (`create`) and scheduling its deletion (`delete`) may take, each default 5m, retries on throttling included.",
            )])
            .describe(
                "A KMS key whose policy releases it only to enclaves attesting to an image's measurements (aws backend).",
            );
        Self {
            schema: Schema { version: 0, block },
        }
    }
}

/// The backend's sealed keys; `None` after saying that it has none and what to do.
fn sealed_keys<'a>(ctx: &'a Ctx, diags: &mut Diagnostics) -> Option<&'a dyn SealedKeys> {
    let keys = ctx.configured.cloud.sealed_keys();
    if keys.is_none() {
        ctx.configured.require(Capability::SealedKeys, None, diags);
    }
    keys
}

/// The PCRs a key of `image` binds when `bind_pcrs` is left out: the EIF's PCR0 (besides its
/// digest), or the UKI's NitroTPM PCR4 and PCR12.
fn default_bound(image: &ImageFacts) -> Vec<u32> {
    match image.document_kind() {
        DocumentKind::Enclave => vec![0],
        DocumentKind::NitroTpm => NITROTPM_ALWAYS_BOUND.to_vec(),
    }
}

/// `bind_pcrs` as a known list, with its default when left out.
fn bound_model(planned: &SealedKeyModel, image: &ImageFacts) -> Tf<Vec<Tf<i64>>> {
    if planned.bind_pcrs.is_unknown() || planned.bind_pcrs.is_null() {
        Tf::Known(
            default_bound(image)
                .into_iter()
                .map(|i| Tf::Known(i64::from(i)))
                .collect(),
        )
    } else {
        planned.bind_pcrs.clone()
    }
}

/// The PCRs `planned` binds; `None` (reported at `bind_pcrs`) when it names PCRs that do not
/// measure a box of `image`.
fn bound_pcrs(planned: &SealedKeyModel, image: &ImageFacts, diags: &mut Diagnostics) -> Option<Vec<u32>> {
    let bound: Vec<u32> = bound_model(planned, image)
        .items()
        .iter()
        .filter_map(|i| i.known().and_then(|i| u32::try_from(*i).ok()))
        .collect();
    let kind = image.document_kind();
    let foreign: Vec<String> = bound
        .iter()
        .filter(|i| !kind.image_pcrs().contains(i))
        .map(u32::to_string)
        .collect();
    if foreign.is_empty() {
        return Some(bound);
    }
    let key = match kind {
        DocumentKind::Enclave => "kms:RecipientAttestation:PCR<n>",
        DocumentKind::NitroTpm => "kms:RecipientAttestation:NitroTPMPCR<n>",
    };
    diags.error_at(
        AttributePath::attr_root("bind_pcrs"),
        "PCRs of the other kind of box",
        format!(
            "bind_pcrs has {}, but a box of this \"{}\" image presents {}, whose image PCRs are {} (KMS checks them as {key}). Bind those (default {:?}), or leave bind_pcrs out.",
            foreign.join(", "),
            image.format.as_str(),
            kind.describe(),
            kind.image_pcrs().map(|i| i.to_string()).join(", "),
            default_bound(image),
        ),
    );
    None
}

/// The key policy for `planned`, from `image`'s measurements; `None` (reported) when it is
/// not a valid policy.
fn policy_of(planned: &SealedKeyModel, image: &ImageFacts, diags: &mut Diagnostics) -> Option<String> {
    let bound = bound_pcrs(planned, image, diags)?;
    let pcr = |i: u32| (i, image.pcrs.get(&i).cloned().unwrap_or_default());
    let binding = match image.document_kind() {
        DocumentKind::Enclave => KeyBinding::Enclave {
            image_sha384: pcr(0).1,
            pcrs: bound.into_iter().map(pcr).collect(),
        },
        DocumentKind::NitroTpm => KeyBinding::NitroTpm {
            pcrs: NITROTPM_ALWAYS_BOUND.into_iter().chain(bound).map(pcr).collect(),
        },
    };
    let spec = SealedKeySpec {
        binding,
        administrator_arns: planned.administrator_arns.strings().unwrap_or_default(),
        recipient_arns: planned.recipient_arns.strings().unwrap_or_default(),
    };
    if let Err(problems) = spec.check() {
        for (field, message) in problems {
            diags.error_at(
                AttributePath::from(&field),
                "Invalid sealed key",
                format!("{field}: {message}."),
            );
        }
        return None;
    }
    Some(spec.policy())
}

/// The image `planned` binds to, when it exists.
async fn image_of(ctx: &Ctx, planned: &SealedKeyModel, diags: &mut Diagnostics) -> Option<ImageFacts> {
    let image_id = planned.image_id.as_deref()?;
    let variant = planned.variant.as_deref().unwrap_or("prod");
    images::facts(ctx, image_id, variant, "image_id", diags).await
}

/// How messages call a key and what it takes its policy from.
const NAMING: governance::Naming = ("key", "image's");

/// The policy governing a key of `image` (see [`governance::inherited_governor`]).
async fn governor_of(
    ctx: &Ctx,
    planned: &SealedKeyModel,
    image: &ImageFacts,
    diags: &mut Diagnostics,
) -> Result<Option<Governor>, ()> {
    governance::inherited_governor(ctx, image.policy_id.as_deref(), &planned.governance, NAMING, diags).await
}

/// What an in-place update does to the key's governance: it follows its image's policy, and a
/// key of an ungoverned image moving to another policy is governed by the one it leaves.
async fn moved(
    ctx: &Ctx,
    prior: &SealedKeyModel,
    planned: &mut SealedKeyModel,
    diags: &mut Diagnostics,
) -> Result<Option<(Change, Vec<Governor>)>, ()> {
    let mut quiet = Diagnostics::default();
    let inherited = image_of(ctx, prior, &mut quiet).await.map(|image| image.policy_id);
    governance::inherited_move(
        ctx,
        (Action::KeyBind, "safebox_sealed_key", "key"),
        inherited,
        (prior.id.as_deref().unwrap_or_default(), &prior.governance),
        &mut planned.governance,
        diags,
    )
    .await
}

/// The governed change of binding a key to the development image: which image, and the key
/// policy that says who may decrypt.
fn bind_change(planned: &SealedKeyModel, image: &ImageFacts, policy: &str) -> Option<Change> {
    planned.is_dev().then(|| {
        Change::create(
            Action::KeyBind,
            "safebox_sealed_key",
            attributes_digest(&serde_json::json!({
                "image_sha256": image.image_sha256,
                "variant": "dev",
                "key_policy_sha256": safebox::canonical::sha256_tagged(policy.as_bytes()),
            })),
        )
    })
}

fn same_policy(a: &str, b: &str) -> bool {
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
    matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
}

#[async_trait::async_trait]
impl Resource for SealedKeyResource {
    type Model = SealedKeyModel;

    fn type_name(&self) -> &'static str {
        "safebox_sealed_key"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn plan(
        &self,
        ctx: &Ctx,
        prior: Option<&SealedKeyModel>,
        planned: &mut SealedKeyModel,
        diags: &mut Diagnostics,
    ) -> Vec<AttributePath> {
        if sealed_keys(ctx, diags).is_none() {
            return Vec::new();
        }
        if planned.recipient_arns.is_unknown() {
            if let Some(administrators) = planned.administrator_arns.strings() {
                planned.recipient_arns = StringList::of(default_recipients(&administrators));
            }
        }
        planned.status = Tf::string(SEALED);
        if let Some(prior) = prior {
            governance::check_anchor(ctx, &prior.governance.change, diags).await;
            governance::keep(&prior.governance.change, &mut planned.governance.change);
            if let Ok(Some((change, governors))) = moved(ctx, prior, planned, diags).await {
                governance::plan(ctx, &mut planned.governance.change, &governors, change, diags).await;
            }
            return Vec::new();
        }
        // The image may not exist yet (created in the same run): then the policy is computed,
        // and a binding governed, at apply.
        let mut quiet = Diagnostics::default();
        let Some(image) = image_of(ctx, planned, &mut quiet).await else {
            if planned.governance.policy_id.is_null() {
                planned.governance.policy_id = Tf::Unknown;
            }
            governance::unknown(&mut planned.governance.change);
            return Vec::new();
        };
        if bound_pcrs(planned, &image, diags).is_none() {
            return Vec::new();
        }
        planned.bind_pcrs = bound_model(planned, &image);
        let policy = if planned.recipient_arns.strings().is_some() {
            policy_of(planned, &image, &mut quiet)
        } else {
            None
        };
        if let Some(policy) = &policy {
            planned.policy = Tf::string(policy);
        }
        let Ok(governor) = governor_of(ctx, planned, &image, diags).await else {
            return Vec::new();
        };
        planned.governance.policy_id = governor.as_ref().map(|g| g.policy_id.clone()).into();
        let change = policy.and_then(|p| bind_change(planned, &image, &p));
        let dev = planned.is_dev();
        let planned = &mut planned.governance.change;
        match (governor, change) {
            (Some(governor), Some(change)) => governance::plan(ctx, planned, &[governor], change, diags).await,
            (Some(_), None) if dev => governance::unknown(planned),
            _ => governance::ungoverned(planned),
        }
        Vec::new()
    }

    async fn create(
        &self,
        ctx: &Ctx,
        planned: &SealedKeyModel,
        _config: &SealedKeyModel,
        diags: &mut Diagnostics,
    ) -> Option<SealedKeyModel> {
        let image = image_of(ctx, planned, diags).await?;
        let policy = policy_of(planned, &image, diags)?;
        if let Some(shown) = planned.policy.as_deref() {
            if shown != policy {
                diags.error_at(
                    AttributePath::attr_root("policy"),
                    "The key policy changed since the plan",
                    "The image's measurements are not the ones the plan showed. No key was created; run terraform plan again and review the new policy.",
                );
                return None;
            }
        }
        let mut state = planned.clone();
        state.bind_pcrs = bound_model(planned, &image);
        let governor = governor_of(ctx, &state, &image, diags).await.ok()?;
        let change = Ok(bind_change(&state, &image, &policy));
        let authorization = governance::authorize_create(ctx, governor.as_ref(), change, &mut state.governance, diags)
            .await
            .ok()?;
        let id = new_record_id("key");
        let name = planned.name.as_deref().unwrap_or_default();
        let keys = sealed_keys(ctx, diags)?;
        let description = format!("Safebox sealed key {name:?} ({id})");
        let allowed = limit(&planned.timeouts, |t| &t.create, DEFAULT_TIMEOUT);
        let tags = crate::tags::of(&planned.tags);
        let creating = keys.create_sealed_key(&id, &description, &policy, &tags);
        let late = format!(
            "Creating the KMS key took longer than timeouts.create ({allowed:?}), so the provider stopped waiting. KMS may still have made it: a key tagged safebox:record = {id} is not in state and nothing can use it; schedule its deletion (aws kms schedule-key-deletion). Then apply again, or raise timeouts.create."
        );
        let key = within(
            allowed,
            creating,
            "Cannot create the sealed key",
            ("The sealed key was not created in time", late),
            diags,
        )
        .await?;
        state.id = Tf::string(&id);
        state.policy = Tf::string(policy);
        state.key_id = Tf::string(&key.key_id);
        state.key_arn = Tf::string(&key.key_arn);
        state.status = Tf::string(SEALED);
        if let Some(authorization) = authorization {
            governance::record(ctx, authorization, &id, &mut state.governance.change, diags).await;
        }
        if !diags.has_errors() {
            record::create(ctx, RecordKind::SealedKey, &id, &state, diags).await;
        }
        if diags.has_errors() {
            let _ = keys.delete_sealed_key(&key.key_id).await;
            return None;
        }
        Some(state)
    }

    async fn read(&self, ctx: &Ctx, state: &SealedKeyModel, diags: &mut Diagnostics) -> Option<SealedKeyModel> {
        let id = state.id.as_deref()?;
        governance::check_anchor(ctx, &state.governance.change, diags).await;
        let mut stored = record::load_checked(ctx, self.records(), id, state, diags).await?;
        let key_id = stored.key_id.as_deref().unwrap_or_default().to_owned();
        let planned = stored.policy.as_deref().unwrap_or_default().to_owned();
        let Some(keys) = sealed_keys(ctx, diags) else {
            return Some(stored);
        };
        let status = match keys.sealed_key_policy(&key_id).await {
            Ok(None) => format!("deleted: the KMS key {key_id} is gone or scheduled for deletion"),
            Ok(Some(actual)) if same_policy(&actual, &planned) => SEALED.to_owned(),
            Ok(Some(_)) => format!("the policy of the KMS key {key_id} differs from the sealed policy"),
            Err(e) => {
                diags.error("Cannot read the sealed key", format!("{e}."));
                return Some(stored);
            }
        };
        stored.status = Tf::string(status);
        Some(stored)
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &SealedKeyModel,
        planned: &SealedKeyModel,
        _config: &SealedKeyModel,
        diags: &mut Diagnostics,
    ) -> SealedKeyModel {
        // Every argument replaces the key; only its tags and its policy change in place (a move
        // is governed by the policy the key leaves).
        let (Some(id), Some(key_id)) = (prior.id.as_deref(), prior.key_id.as_deref()) else {
            return prior.clone();
        };
        let home = [ctx.configured.cloud.as_ref()];
        if !crate::tags::retag(&home, Tagged::SealedKey(key_id), (&prior.tags, &planned.tags), diags).await {
            return prior.clone();
        }
        let mut planned = planned.clone();
        let authorization = match moved(ctx, prior, &mut planned, diags).await {
            Err(()) => return prior.clone(),
            Ok(Some((change, governors))) => {
                match governance::authorize(ctx, &planned.governance.change, &governors, &change, diags).await {
                    Some(authorization) => Some(authorization),
                    None => return prior.clone(),
                }
            }
            Ok(None) => None,
        };
        match authorization {
            Some(authorization) => {
                governance::record(ctx, authorization, id, &mut planned.governance.change, diags).await;
            }
            None => governance::keep(&prior.governance.change, &mut planned.governance.change),
        }
        if diags.has_errors() {
            return prior.clone();
        }
        record::store_update(ctx, (self.records(), id), prior, &planned, diags).await
    }

    async fn delete(&self, ctx: &Ctx, prior: &SealedKeyModel, diags: &mut Diagnostics) {
        let Some(id) = prior.id.as_deref() else { return };
        if let Some(key_id) = prior.key_id.as_deref() {
            let Some(keys) = sealed_keys(ctx, diags) else { return };
            let allowed = limit(&prior.timeouts, |t| &t.delete, DEFAULT_TIMEOUT);
            let late = format!("Scheduling the deletion of KMS key {key_id} took longer than timeouts.delete ({allowed:?}); it is still in state. Destroy again, or raise timeouts.delete.");
            let deleting = keys.delete_sealed_key(key_id);
            let late = ("The sealed key was not deleted in time", late);
            if within(allowed, deleting, "Cannot delete the sealed key", late, diags)
                .await
                .is_none()
            {
                return;
            }
        }
        record::remove(ctx, RecordKind::SealedKey, id, diags).await;
        governance::record_destroy(ctx, ("safebox_sealed_key", id), &prior.governance, diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Option<SealedKeyModel> {
        record::import(ctx, RecordKind::SealedKey, id, &self.schema, diags).await
    }
}

#[cfg(test)]
mod tests {
    use safebox::image::spec::ImageFormat;

    use super::*;

    const ADMIN: &str = "arn:aws:iam::123456789012:role/KeyAdmin";

    fn key(bind_pcrs: Option<&[i64]>) -> SealedKeyModel {
        SealedKeyModel {
            bind_pcrs: bind_pcrs.map_or(Tf::Unknown, |list| {
                Tf::Known(list.iter().copied().map(Tf::Known).collect())
            }),
            administrator_arns: StringList::of([ADMIN]),
            recipient_arns: StringList::of(default_recipients(&[ADMIN.to_owned()])),
            ..SealedKeyModel::default()
        }
    }

    /// The attestation conditions of the policy for `bind_pcrs` of an image of `format`, or the
    /// diagnostics that refused it.
    fn conditions(format: ImageFormat, bind_pcrs: Option<&[i64]>) -> Result<Vec<String>, Diagnostics> {
        let mut diags = Diagnostics::default();
        let policy = policy_of(&key(bind_pcrs), &ImageFacts::example(format), &mut diags).ok_or(diags)?;
        let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
        Ok(policy["Statement"][1]["Condition"]["StringEqualsIgnoreCase"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={}", &v.as_str().unwrap()[..4]))
            .collect())
    }

    #[test]
    fn a_uki_key_binds_nitrotpm_pcr4_and_pcr12_and_an_eif_key_its_digest() {
        let tpm = |i: u32| format!("kms:RecipientAttestation:NitroTPMPCR{i}={i:02x}{i:02x}");
        assert_eq!(conditions(ImageFormat::Uki, None).unwrap(), [tpm(12), tpm(4)]);
        assert_eq!(
            conditions(ImageFormat::Uki, Some(&[7])).unwrap(),
            [tpm(12), tpm(4), tpm(7)]
        );
        assert_eq!(conditions(ImageFormat::Uki, Some(&[12, 4])).unwrap(), [tpm(12), tpm(4)]);
        assert_eq!(
            conditions(ImageFormat::Eif, None).unwrap(),
            [
                "kms:RecipientAttestation:ImageSha384=0000",
                "kms:RecipientAttestation:PCR0=0000"
            ]
        );
        let uki = ImageFacts::example(ImageFormat::Uki);
        assert_eq!(
            bound_model(&key(None), &uki),
            Tf::Known(vec![Tf::Known(4), Tf::Known(12)]),
            "the default is shown in the plan"
        );
    }

    #[test]
    fn bind_pcrs_of_the_other_kind_of_box_are_refused_naming_the_fix() {
        for (format, bind, fix) in [
            (ImageFormat::Uki, [0, 4], "are 4, 7, 12 (KMS checks them as kms:RecipientAttestation:NitroTPMPCR<n>). Bind those (default [4, 12])"),
            (ImageFormat::Eif, [12, 0], "are 0, 1, 2 (KMS checks them as kms:RecipientAttestation:PCR<n>). Bind those (default [0])"),
        ] {
            let refused = conditions(format, Some(&bind)).unwrap_err();
            let [diagnostic] = refused.as_slice() else {
                panic!("{refused:?}")
            };
            assert_eq!(diagnostic.path.as_ref().map(ToString::to_string).as_deref(), Some("bind_pcrs"));
            assert!(diagnostic.detail.contains(fix), "{}", diagnostic.detail);
        }
    }
}
