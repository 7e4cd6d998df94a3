//! Governance: M-of-N policies held by auditors the customer chooses.
//!
//! - [`keys`]: the signer keys approvals may be signed with.
//! - [`policy`]: a policy's specification, its validation and its canonical document.
//! - [`change`]: governed changes and the digests auditors sign.
//! - [`approval`]: approvals and how they count against a policy's rule.
//! - [`audit`]: the hash-chained log of enforced changes, its head and its verification.

pub mod approval;
pub mod audit;
pub mod change;
pub mod keys;
pub mod policy;

use std::fmt;
use std::str::FromStr;

/// A governed action: the kind of change a policy rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Creating or replacing a `safebox_image` (with its launch permissions and copies), or
    /// moving it to another policy.
    ImagePublish,
    /// Changing who may launch a published image, or which regions it is copied to.
    ImageShare,
    /// Creating or replacing a `safebox_enclave`.
    EnclaveDeploy,
    /// Creating a `safebox_attested_link`.
    LinkCreate,
    /// Changing or deleting a `safebox_policy` after its creation.
    PolicyUpdate,
    /// Binding a `safebox_sealed_key` to the development image of a governed image (a box
    /// with SSH could then decrypt).
    KeyBind,
}

impl Action {
    /// Every action, in documentation order.
    pub const ALL: [Action; 6] = [
        Action::ImagePublish,
        Action::ImageShare,
        Action::EnclaveDeploy,
        Action::LinkCreate,
        Action::PolicyUpdate,
        Action::KeyBind,
    ];

    /// The action's name as written in HCL and in signed approvals.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImagePublish => "image.publish",
            Self::ImageShare => "image.share",
            Self::EnclaveDeploy => "enclave.deploy",
            Self::LinkCreate => "link.create",
            Self::PolicyUpdate => "policy.update",
            Self::KeyBind => "key.bind",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the governed actions.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{given:?} is not a governed action; use one of image.publish, image.share, enclave.deploy, link.create, policy.update, key.bind")]
pub struct UnknownAction {
    given: String,
}

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAction { given: s.to_owned() })
    }
}
