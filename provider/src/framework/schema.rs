//! Schemas as data: attributes declare their type, mode, validators, plan modifiers and
//! defaults, and the generic request handling in [`super::plan`] applies them, so resources
//! only write what is particular to them.

use safebox_proto::tfplugin6 as pb;

use super::types::Type;
use super::value::Value;

pub use super::modifiers::Modifier;
pub use super::validators::Validator;

/// Whether the user sets an attribute, the provider does, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The user must set it.
    Required,
    /// The user may set it.
    Optional,
    /// The provider sets it.
    Computed,
    /// The user may set it; otherwise the provider does (defaults).
    OptionalComputed,
}

/// One attribute.
#[derive(Clone)]
pub struct Attribute {
    /// The attribute's name.
    pub name: &'static str,
    /// Its type.
    pub ty: Type,
    /// Markdown description, shown in docs and editors.
    pub description: &'static str,
    /// Who sets it.
    pub mode: Mode,
    /// Hidden in plan output.
    pub sensitive: bool,
    /// Taken from configuration only, never stored in state.
    pub write_only: bool,
    /// Checks on known values.
    pub validators: Vec<Validator>,
    /// Planning behaviour.
    pub modifiers: Vec<Modifier>,
    /// The value planned when the configuration leaves it null (needs `OptionalComputed`).
    pub default: Option<Value>,
}

impl Attribute {
    fn new(name: &'static str, ty: Type, mode: Mode) -> Self {
        Self {
            name,
            ty,
            description: "",
            mode,
            sensitive: false,
            write_only: false,
            validators: Vec::new(),
            modifiers: Vec::new(),
            default: None,
        }
    }

    /// An attribute the user must set.
    #[must_use]
    pub fn required(name: &'static str, ty: Type) -> Self {
        Self::new(name, ty, Mode::Required)
    }

    /// An attribute the user may set.
    #[must_use]
    pub fn optional(name: &'static str, ty: Type) -> Self {
        Self::new(name, ty, Mode::Optional)
    }

    /// An attribute the provider sets.
    #[must_use]
    pub fn computed(name: &'static str, ty: Type) -> Self {
        Self::new(name, ty, Mode::Computed)
    }

    /// An optional attribute the provider fills in when the configuration leaves it null.
    #[must_use]
    pub fn optional_computed(name: &'static str, ty: Type) -> Self {
        Self::new(name, ty, Mode::OptionalComputed)
    }

    /// An optional attribute that takes `default` when not set.
    #[must_use]
    pub fn with_default(name: &'static str, ty: Type, default: Value) -> Self {
        let mut attribute = Self::new(name, ty, Mode::OptionalComputed);
        attribute.default = Some(default);
        attribute
    }

    /// Sets the description.
    #[must_use]
    pub fn describe(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }

    /// Adds a validator.
    #[must_use]
    pub fn validate(mut self, validator: Validator) -> Self {
        self.validators.push(validator);
        self
    }

    /// Adds a plan modifier.
    #[must_use]
    pub fn modify(mut self, modifier: Modifier) -> Self {
        self.modifiers.push(modifier);
        self
    }

    /// Marks the attribute sensitive.
    #[must_use]
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    /// Marks the attribute write-only: read from configuration, never stored.
    #[must_use]
    pub fn write_only(mut self) -> Self {
        self.write_only = true;
        self
    }

    /// Whether the provider may set it.
    #[must_use]
    pub fn is_computed(&self) -> bool {
        matches!(self.mode, Mode::Computed | Mode::OptionalComputed)
    }

    fn to_proto(&self) -> pb::schema::Attribute {
        pb::schema::Attribute {
            name: self.name.to_owned(),
            r#type: self.ty.to_json().to_string().into_bytes(),
            nested_type: None,
            description: self.description.to_owned(),
            required: self.mode == Mode::Required,
            optional: matches!(self.mode, Mode::Optional | Mode::OptionalComputed),
            computed: self.is_computed(),
            sensitive: self.sensitive,
            description_kind: pb::StringKind::Markdown as i32,
            deprecated: false,
            write_only: self.write_only,
            deprecation_message: String::new(),
        }
    }
}

/// How a nested block repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nesting {
    /// At most one, as an object.
    Single,
    /// An ordered list.
    List,
    /// An unordered set.
    Set,
}

/// A nested block type.
#[derive(Clone)]
pub struct NestedBlock {
    /// The block's type name.
    pub name: &'static str,
    /// How it repeats.
    pub nesting: Nesting,
    /// Its contents.
    pub block: Block,
    /// Fewest blocks allowed (Terraform enforces it).
    pub min_items: i64,
    /// Most blocks allowed, 0 for no limit (Terraform enforces it).
    pub max_items: i64,
    /// Planning behaviour for the block as a whole.
    pub modifiers: Vec<Modifier>,
}

impl NestedBlock {
    /// A block that may appear once.
    #[must_use]
    pub fn single(name: &'static str, block: Block) -> Self {
        Self {
            name,
            nesting: Nesting::Single,
            block,
            min_items: 0,
            max_items: 0,
            modifiers: Vec::new(),
        }
    }

    /// A repeated block, in order, at least `min_items` times.
    #[must_use]
    pub fn list(name: &'static str, block: Block, min_items: i64) -> Self {
        Self {
            name,
            nesting: Nesting::List,
            block,
            min_items,
            max_items: 0,
            modifiers: Vec::new(),
        }
    }

    /// A repeated block whose order does not matter, at least `min_items` times.
    #[must_use]
    pub fn set(name: &'static str, block: Block, min_items: i64) -> Self {
        Self {
            nesting: Nesting::Set,
            ..Self::list(name, block, min_items)
        }
    }

    /// Makes a single block required (Terraform's `MinItems = MaxItems = 1`).
    #[must_use]
    pub fn required(mut self) -> Self {
        self.min_items = 1;
        self.max_items = 1;
        self
    }

    /// Adds a plan modifier for the whole block.
    #[must_use]
    pub fn modify(mut self, modifier: Modifier) -> Self {
        self.modifiers.push(modifier);
        self
    }

    /// The type of the block's value.
    #[must_use]
    pub fn value_type(&self) -> Type {
        let object = self.block.value_type();
        match self.nesting {
            Nesting::Single => object,
            Nesting::List => Type::list(object),
            Nesting::Set => Type::set(object),
        }
    }

    fn to_proto(&self) -> pb::schema::NestedBlock {
        use pb::schema::nested_block::NestingMode;
        pb::schema::NestedBlock {
            type_name: self.name.to_owned(),
            block: Some(self.block.to_proto()),
            nesting: match self.nesting {
                Nesting::Single => NestingMode::Single,
                Nesting::List => NestingMode::List,
                Nesting::Set => NestingMode::Set,
            } as i32,
            min_items: self.min_items,
            max_items: self.max_items,
        }
    }
}

/// A block: attributes and nested blocks.
#[derive(Clone, Default)]
pub struct Block {
    /// Markdown description.
    pub description: &'static str,
    /// The attributes.
    pub attributes: Vec<Attribute>,
    /// The nested block types.
    pub blocks: Vec<NestedBlock>,
}

impl Block {
    /// A block with these attributes and no nested blocks.
    #[must_use]
    pub fn new(attributes: Vec<Attribute>) -> Self {
        Self {
            description: "",
            attributes,
            blocks: Vec::new(),
        }
    }

    /// Adds nested block types.
    #[must_use]
    pub fn with_blocks(mut self, blocks: Vec<NestedBlock>) -> Self {
        self.blocks = blocks;
        self
    }

    /// Sets the description.
    #[must_use]
    pub fn describe(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }

    /// The object type of the block's value.
    #[must_use]
    pub fn value_type(&self) -> Type {
        Type::Object(
            self.attributes
                .iter()
                .map(|a| (a.name.to_owned(), a.ty.clone()))
                .chain(self.blocks.iter().map(|b| (b.name.to_owned(), b.value_type())))
                .collect(),
        )
    }

    fn to_proto(&self) -> pb::schema::Block {
        pb::schema::Block {
            version: 0,
            attributes: self.attributes.iter().map(Attribute::to_proto).collect(),
            block_types: self.blocks.iter().map(NestedBlock::to_proto).collect(),
            description: self.description.to_owned(),
            description_kind: pb::StringKind::Markdown as i32,
            deprecated: false,
            deprecation_message: String::new(),
            computed: false,
        }
    }
}

/// A resource's or the provider's schema.
#[derive(Clone)]
pub struct Schema {
    /// Bumped when stored state needs upgrading.
    pub version: i64,
    /// The top-level block.
    pub block: Block,
}

impl Schema {
    /// The protocol form.
    #[must_use]
    pub fn to_proto(&self) -> pb::Schema {
        pb::Schema {
            version: self.version,
            block: Some(self.block.to_proto()),
        }
    }

    /// The type of a whole resource value.
    #[must_use]
    pub fn value_type(&self) -> Type {
        self.block.value_type()
    }
}
