//! Gradient rules, one operator family per file, registered by (domain, operator) in a table.
//! A rule gets the forward node, the gradient of each of its outputs (`None` where an output is off
//! the path), and which inputs need a gradient; it returns one gradient per input (`None` for
//! inputs that need none). Rule variants (guided backpropagation, DeconvNet, DeepLIFT, LRP) are
//! alternative tables, not branches inside rules.

mod activation;
mod axis;
mod conv;
mod elementwise;
pub mod lrp;
mod matmul;
mod norm;
mod pool;
mod reduce;
mod rescale;
mod resize;
mod shape;

use std::collections::HashMap;

pub use lrp::{Composite, InputBounds, LrpRules};

use super::GradContext;
use crate::onnx::node::{node_name, op_type, AttrError};
use crate::onnx::proto::NodeProto;

/// A gradient rule.
pub type Rule = fn(&mut GradContext, &NodeProto, &[Option<String>], &[bool]) -> Result<Vec<Option<String>>, RuleError>;

/// A rule that cannot handle this node (an attribute value, a non-constant parameter, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("node `{node}`: {message}")]
pub struct RuleError {
    /// The node.
    pub node: String,
    /// What is wrong.
    pub message: String,
}

impl RuleError {
    /// An error about `node`.
    pub fn new(node: &NodeProto, message: impl Into<String>) -> Self {
        Self {
            node: format!("{} ({})", node_name(node), op_type(node)),
            message: message.into(),
        }
    }

    pub(crate) fn at(node: &str, message: impl Into<String>) -> Self {
        Self {
            node: node.to_string(),
            message: message.into(),
        }
    }
}

impl From<AttrError> for RuleError {
    fn from(e: AttrError) -> Self {
        Self {
            node: format!("{} ({})", e.node, e.op),
            message: format!("attribute `{}`: {}", e.attribute, e.message),
        }
    }
}

/// Which rule set a table implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleSet {
    /// Exact gradients.
    Standard,
    /// Guided backpropagation (Springenberg et al. 2015): ReLU passes only positive gradients
    /// through positive inputs.
    GuidedBackprop,
    /// DeconvNet (Zeiler and Fergus 2014): ReLU passes only positive gradients, whatever its
    /// input; MaxPool keeps the forward switches (the exact rule).
    DeconvNet,
    /// DeepLIFT's rescale rule: nonlinearities pass (f(x) - f(x')) / (x - x'), the reference in
    /// the batch's second half.
    DeepLiftRescale,
    /// Layer-wise relevance propagation with a zennit composite: relevance, not gradients, flows
    /// back from the target's score.
    Lrp(LrpRules),
}

impl RuleSet {
    /// Every rule set a method can ask for, up to the values of its parameters (LRP's epsilon and
    /// gamma change numbers, not which nodes its rules accept): what the model report dry-runs.
    pub fn families() -> Vec<RuleSet> {
        let mut all = vec![
            RuleSet::Standard,
            RuleSet::GuidedBackprop,
            RuleSet::DeconvNet,
            RuleSet::DeepLiftRescale,
        ];
        all.extend(lrp::Composite::ALL.map(|c| RuleSet::Lrp(LrpRules::new(c, c.default_epsilon(), 0.25))));
        all
    }

    /// The family's name in the model report: `standard`, `guided-backprop`, `deconvnet`,
    /// `deeplift-rescale`, `lrp/<composite>`.
    pub fn family(&self) -> String {
        match self {
            RuleSet::Standard => "standard".into(),
            RuleSet::GuidedBackprop => "guided-backprop".into(),
            RuleSet::DeconvNet => "deconvnet".into(),
            RuleSet::DeepLiftRescale => "deeplift-rescale".into(),
            RuleSet::Lrp(rules) => format!("lrp/{}", rules.composite.name()),
        }
    }
}

/// Rules by (domain, operator).
pub struct RuleTable {
    set: RuleSet,
    rules: HashMap<(&'static str, &'static str), Rule>,
    input_bounds: Option<InputBounds>,
}

impl RuleTable {
    /// A table with no rules yet.
    pub(crate) fn empty(set: RuleSet) -> Self {
        RuleTable {
            set,
            rules: HashMap::new(),
            input_bounds: None,
        }
    }

    /// The exact-gradient rules.
    pub fn standard() -> Self {
        let mut t = Self::empty(RuleSet::Standard);
        elementwise::register(&mut t);
        activation::register(&mut t);
        conv::register(&mut t);
        matmul::register(&mut t);
        pool::register(&mut t);
        norm::register(&mut t);
        reduce::register(&mut t);
        shape::register(&mut t);
        resize::register(&mut t);
        t
    }

    /// The standard rules with guided backpropagation's ReLU.
    pub fn guided_backprop() -> Self {
        let mut t = Self::standard();
        t.set = RuleSet::GuidedBackprop;
        t.register("", "Relu", activation::relu_guided);
        t
    }

    /// The standard rules with DeconvNet's ReLU.
    pub fn deconvnet() -> Self {
        let mut t = Self::standard();
        t.set = RuleSet::DeconvNet;
        t.register("", "Relu", activation::relu_deconvnet);
        t
    }

    /// The standard rules with DeepLIFT's rescale rule on elementwise nonlinearities.
    pub fn deeplift_rescale() -> Self {
        let mut t = Self::standard();
        t.set = RuleSet::DeepLiftRescale;
        rescale::register(&mut t);
        t
    }

    /// The table for a rule set.
    pub fn for_set(set: RuleSet) -> Self {
        match set {
            RuleSet::Standard => Self::standard(),
            RuleSet::GuidedBackprop => Self::guided_backprop(),
            RuleSet::DeconvNet => Self::deconvnet(),
            RuleSet::DeepLiftRescale => Self::deeplift_rescale(),
            RuleSet::Lrp(rules) => lrp::table(rules),
        }
    }

    /// Which rule set this is.
    pub fn set(&self) -> RuleSet {
        self.set
    }

    /// True when the table propagates relevance (LRP): the seed is the target's score, and batch
    /// normalisation is folded into the layer before it first.
    pub fn propagates_relevance(&self) -> bool {
        matches!(self.set, RuleSet::Lrp(_))
    }

    /// The same table with the model input's bounds (ZBox reads them).
    pub fn with_input_bounds(mut self, bounds: Option<InputBounds>) -> Self {
        self.input_bounds = bounds;
        self
    }

    /// The model input's bounds, when known.
    pub fn input_bounds(&self) -> Option<&InputBounds> {
        self.input_bounds.as_ref()
    }

    /// Adds or replaces the rule for a default-domain operator.
    pub fn register(&mut self, domain: &'static str, op: &'static str, rule: Rule) {
        self.rules.insert((domain, op), rule);
    }

    /// The rule for (domain, operator).
    pub fn get(&self, domain: &str, op: &str) -> Option<Rule> {
        self.rules
            .iter()
            .find(|((d, o), _)| *d == domain && *o == op)
            .map(|(_, r)| *r)
    }

    /// (domain, operator) of every rule, sorted: what tests hold against their finite-difference cases.
    pub fn operators(&self) -> Vec<(&'static str, &'static str)> {
        let mut ops: Vec<_> = self.rules.keys().copied().collect();
        ops.sort();
        ops
    }
}

/// The gradient of output 0, which every single-output rule needs.
pub(crate) fn grad0<'g>(node: &NodeProto, grads: &'g [Option<String>]) -> Result<&'g str, RuleError> {
    grads
        .first()
        .and_then(|g| g.as_deref())
        .ok_or_else(|| RuleError::new(node, "no gradient for output 0"))
}

/// Input `i` of a node (empty string when absent).
pub(crate) fn input(node: &NodeProto, i: usize) -> &str {
    node.input.get(i).map(String::as_str).unwrap_or("")
}

/// Output 0 of a node.
pub(crate) fn output(node: &NodeProto) -> &str {
    node.output.first().map(String::as_str).unwrap_or("")
}

/// Refuses a node whose input `i` needs a gradient the rule does not provide.
pub(crate) fn only_input0(node: &NodeProto, needs: &[bool], what: &str) -> Result<(), RuleError> {
    if needs.iter().skip(1).any(|n| *n) {
        return Err(RuleError::new(
            node,
            format!("{what} depends on the input; only the data input's gradient is supported"),
        ));
    }
    Ok(())
}

/// `[g, None, None, ...]` sized to the node's inputs.
pub(crate) fn first_only(node: &NodeProto, g: String) -> Vec<Option<String>> {
    let mut v = vec![None; node.input.len()];
    v[0] = Some(g);
    v
}
