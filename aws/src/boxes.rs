//! Boxes as EC2 instances that boot a `"uki"` image's AMI, with NitroTPM.
//!
//! `RunInstances` from the variant's AMI (registered UEFI with `TpmSupport` v2.0, see
//! [`crate::images`]) on an instance type that has NitroTPM ([`DEFAULT_INSTANCE_TYPE`] unless
//! the placement names one), without `EnclaveOptions`: the instance itself is the box, and its
//! NitroTPM attests to the disk it booted. IMDSv2 is required (the hop limit of 1 keeps the
//! metadata service from anything the box would forward), a `ClientToken` derived from the
//! box's record id means a retried call never launches twice, and `safebox:record` tags let a
//! later attempt or a destroy find the instance. The box's agent answers at
//! `http://<private IP>:8443` unless the placement names another endpoint; a development box's
//! sshd at `<private IP>:22` (the instance is tagged `safebox:ssh`).
//!
//! The instance's user data is the box's boot configuration
//! ([`safebox::agent_api::BootConfig`]), `{"safebox_box_key": "<hex>"}`: the public half of the
//! box key, which the agent inside requires on every management request. It is public by design
//! (anyone who may describe the instance may read it); the private half never leaves the
//! provider's `state_dir`.
//!
//! An `"eif"` image's AMI is a payload volume for a parent runtime that does not exist yet, not
//! a disk that boots: [`boots`] says so, and the provider refuses such a box at plan.

use std::time::Duration;

use aws_sdk_ec2::types::{
    Filter, HttpTokensState, IamInstanceProfileSpecification, Instance, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceStateName, InstanceType, ResourceType, TagSpecification,
};
use safebox::agent_api::BootConfig;
use safebox::cloud::{check_record_id, BoxInstance, BoxSpec, CloudError, RecordKind, Tags};
use safebox::image::spec::ImageFormat;
use sha2::{Digest, Sha256};

use crate::{api_error, TAG_KIND, TAG_RECORD};

/// The instance type when none is given: a small general-purpose Nitro type (2 vCPUs, 8 GiB)
/// that supports NitroTPM and UEFI boot. `instance_type` chooses another; it must support
/// NitroTPM too (Amazon EC2 User Guide, "NitroTPM requirements"), or EC2 refuses the launch.
pub const DEFAULT_INSTANCE_TYPE: &str = "m6i.large";
/// The agent's port on the instance.
pub const AGENT_PORT: u16 = 8443;
/// The guest's SSH port (development boxes).
const SSH_PORT: u16 = 22;
/// The tag marking a box that serves SSH.
const TAG_SSH: &str = "safebox:ssh";

/// Whether a box of an image of `format` can run here: only a disk that boots (`"uki"`).
#[must_use]
pub fn boots(format: ImageFormat) -> bool {
    format == ImageFormat::Uki
}
const POLL: Duration = Duration::from_secs(2);

/// Launches box `id` (or finds the one an earlier attempt launched) and waits until it runs.
pub async fn launch(ec2: &aws_sdk_ec2::Client, id: &str, spec: &BoxSpec) -> Result<BoxInstance, CloudError> {
    check_record_id(RecordKind::Enclave, id)?;
    if !boots(spec.format) {
        return Err(CloudError::Unsupported {
            backend: "aws",
            what: format!("boot a box of an \"{}\" image", spec.format.as_str()),
            fix: "set format = \"uki\" on the safebox_image: an \"eif\" image's AMI does not boot",
        });
    }
    let instance = match live_instance(ec2, id).await? {
        Some(instance) => instance,
        None => run(ec2, id, spec).await?,
    };
    let instance_id = instance.instance_id().unwrap_or_default().to_owned();
    // Bounded by the caller's timeouts.create; the caller terminates the box on any error.
    let started = std::time::Instant::now();
    let mut instance = instance;
    loop {
        match instance.state().and_then(|s| s.name()) {
            Some(InstanceStateName::Running) => break,
            Some(InstanceStateName::Pending) | None => {}
            Some(other) => {
                return Err(CloudError::Launch {
                    id: id.to_owned(),
                    reason: format!(
                        "instance {instance_id} went {} instead of running{}",
                        other.as_str(),
                        instance
                            .state_reason()
                            .and_then(|r| r.message())
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ),
                })
            }
        }
        if started.elapsed() > spec.start_timeout {
            return Err(CloudError::Launch {
                id: id.to_owned(),
                reason: format!(
                    "instance {instance_id} was not running after {} s (timeouts.create); raise timeouts.create if instances of this type start slowly",
                    spec.start_timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
        instance = describe(ec2, &instance_id).await?.ok_or_else(|| CloudError::Launch {
            id: id.to_owned(),
            reason: format!("instance {instance_id} disappeared while starting"),
        })?;
    }
    endpoint_of(id, &instance, spec.placement.attestation_endpoint.as_deref())
}

fn endpoint_of(id: &str, instance: &Instance, explicit: Option<&str>) -> Result<BoxInstance, CloudError> {
    let ssh = instance.tags().iter().any(|t| t.key() == Some(TAG_SSH));
    let ssh_endpoint = instance
        .private_ip_address()
        .filter(|_| ssh)
        .map(|ip| format!("{ip}:{SSH_PORT}"));
    let instance_id = instance.instance_id().unwrap_or_default().to_owned();
    let endpoint = match explicit {
        Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
        None => match instance.private_ip_address() {
            Some(ip) => format!("http://{ip}:{AGENT_PORT}"),
            None => {
                return Err(CloudError::Launch {
                    id: id.to_owned(),
                    reason: format!(
                        "instance {instance_id} has no private IP address for its agent; set attestation_endpoint"
                    ),
                })
            }
        },
    };
    Ok(BoxInstance {
        instance_id,
        endpoint,
        ssh_endpoint,
    })
}

/// The box's boot configuration, as `RunInstances` takes user data (base64): the agent reads it
/// from IMDSv2 at boot and takes nothing else from it.
fn boot_configuration(spec: &BoxSpec) -> String {
    use base64::Engine as _;
    let config = BootConfig {
        box_key: spec.box_key.clone(),
        listen: None,
        module_id: None,
    };
    base64::engine::general_purpose::STANDARD.encode(config.to_json())
}

/// The idempotency token of box `id`'s `RunInstances` (at most 64 ASCII characters).
fn client_token(id: &str) -> String {
    format!("safebox-{}", &hex::encode(Sha256::digest(id.as_bytes()))[..48])
}

async fn run(ec2: &aws_sdk_ec2::Client, id: &str, spec: &BoxSpec) -> Result<Instance, CloudError> {
    let p = &spec.placement;
    // The user's tags on the instance and its volumes (their `Name` wins over ours), ours on
    // the instance.
    let mut instance_tags = Tags::from([
        (TAG_RECORD.to_owned(), id.to_owned()),
        (TAG_KIND.to_owned(), "box".to_owned()),
        ("Name".to_owned(), format!("safebox-{id}")),
    ]);
    if spec.ssh {
        instance_tags.insert(TAG_SSH.to_owned(), SSH_PORT.to_string());
    }
    instance_tags.extend(p.tags.clone());
    let specification = |resource: ResourceType, tags: &Tags| {
        TagSpecification::builder()
            .resource_type(resource)
            .set_tags(Some(crate::ec2_tags(tags)))
            .build()
    };
    let mut tag_specifications = vec![specification(ResourceType::Instance, &instance_tags)];
    if !p.tags.is_empty() {
        tag_specifications.push(specification(ResourceType::Volume, &p.tags));
    }
    let profile = p.iam_instance_profile.as_ref().map(|profile| {
        let builder = IamInstanceProfileSpecification::builder();
        if profile.starts_with("arn:") {
            builder.arn(profile).build()
        } else {
            builder.name(profile).build()
        }
    });
    let run = ec2
        .run_instances()
        .image_id(&spec.artifact)
        .instance_type(InstanceType::from(
            p.instance_type.as_deref().unwrap_or(DEFAULT_INSTANCE_TYPE),
        ))
        .min_count(1)
        .max_count(1)
        .client_token(client_token(id))
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_tokens(HttpTokensState::Required)
                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                .http_put_response_hop_limit(1)
                .build(),
        )
        .user_data(boot_configuration(spec))
        .set_subnet_id(p.subnet_id.clone())
        .set_security_group_ids((!p.security_group_ids.is_empty()).then(|| p.security_group_ids.clone()))
        .set_iam_instance_profile(profile)
        .set_tag_specifications(Some(tag_specifications))
        .send()
        .await
        .map_err(|e| api_error("ec2:RunInstances", e))?;
    run.instances().first().cloned().ok_or_else(|| CloudError::Launch {
        id: id.to_owned(),
        reason: "RunInstances returned no instance".into(),
    })
}

async fn describe(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Option<Instance>, CloudError> {
    let found = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| api_error("ec2:DescribeInstances", e))?;
    Ok(found.reservations().iter().flat_map(|r| r.instances()).next().cloned())
}

/// Box `id`'s instances that are pending or running.
async fn live_instances(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Vec<Instance>, CloudError> {
    let found = ec2
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{TAG_RECORD}")).values(id).build())
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .map_err(|e| api_error("ec2:DescribeInstances", e))?;
    Ok(found
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect())
}

/// Sets the user's `tags` on box `id`'s instance and its volumes and removes the keys `removed`.
pub async fn retag(ec2: &aws_sdk_ec2::Client, id: &str, tags: &Tags, removed: &[String]) -> Result<(), CloudError> {
    let mut resources = Vec::new();
    for instance in live_instances(ec2, id).await? {
        resources.extend(instance.instance_id().map(str::to_owned));
        resources.extend(
            instance
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs()?.volume_id().map(str::to_owned)),
        );
    }
    crate::retag_ec2(ec2, resources, tags, removed).await
}

async fn live_instance(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Option<Instance>, CloudError> {
    Ok(live_instances(ec2, id).await?.into_iter().next())
}

/// Box `id`, if it runs. Its endpoint is where its agent answers by default; an explicit
/// endpoint is the caller's to remember.
pub async fn find(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Option<BoxInstance>, CloudError> {
    check_record_id(RecordKind::Enclave, id)?;
    let running = live_instances(ec2, id)
        .await?
        .into_iter()
        .find(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running));
    running.map(|i| endpoint_of(id, &i, None)).transpose()
}

/// Terminates every instance of box `id`.
pub async fn terminate(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<(), CloudError> {
    check_record_id(RecordKind::Enclave, id)?;
    let ids: Vec<String> = live_instances(ec2, id)
        .await?
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ec2.terminate_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .map_err(|e| api_error("ec2:TerminateInstances", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_stable_short_and_distinct() {
        let a = client_token("box-0123456789abcdef");
        assert_eq!(a, client_token("box-0123456789abcdef"));
        assert_ne!(a, client_token("box-0123456789abcdee"));
        assert!(a.len() <= 64 && a.is_ascii());
    }
}
