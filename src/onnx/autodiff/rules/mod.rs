//! Gradient rules, one operator family per file, registered by (domain, operator) in a table.
//! A rule gets the forward node, the gradient of each of its outputs (`None` where an output is off
//! the path), and which inputs need a gradient; it returns one gradient per input (`None` for
//! inputs that need none). Rule variants (ReLU masked otherwise, the rescale rule, relevance
//! propagation) are alternative tables, not branches inside rules.

mod activation;
mod axis;
mod conv;
mod elementwise;
mod matmul;
mod norm;
mod pattern;
mod pool;
mod reduce;
pub mod relevance;
mod rescale;
mod resize;
mod shape;

use std::collections::HashMap;
use std::sync::Arc;

pub use pattern::PatternRules;
pub use relevance::{Composite, InputBounds, RelevanceRules};

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

/// Which rule set a table implements, named by what its rules do; a caller asks for a table by
/// its rules, not by the method that uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleSet {
    /// Exact gradients.
    Exact,
    /// Exact gradients, except that ReLU passes only positive gradients, and only through
    /// positive inputs: `relu(g) * (y > 0)` (guided backpropagation's rule, Springenberg et al.
    /// 2015).
    ReluMaskedByInputAndGradient,
    /// Exact gradients, except that ReLU passes `relu(g)` whatever its input was (DeconvNet's
    /// rule, Zeiler and Fergus 2014); MaxPool keeps the forward switches (the exact rule).
    ReluMaskedByGradient,
    /// The rescale rule (DeepLIFT's, Shrikumar et al. 2017): elementwise nonlinearities pass the
    /// finite-difference quotient `(f(x) - f(x')) / (x - x')`, the reference x' in the batch's
    /// second half.
    Rescale,
    /// Relevance propagation with a composite of zennit's rules (layer-wise relevance
    /// propagation, Bach et al. 2015): relevance, not gradients, flows back from the target's
    /// score.
    Relevance(RelevanceRules),
    /// Exact gradients, except that each linear layer transposes its fitted pattern (PatternNet)
    /// or its weight times the pattern (PatternAttribution) in place of its weight; the seed is
    /// the target's score (Kindermans et al. 2018).
    Pattern(PatternRules),
}

impl RuleSet {
    /// The rule set's family as answers name it (`details.cost.backward_rows`).
    pub fn label(&self) -> &'static str {
        match self {
            RuleSet::Exact => "exact",
            RuleSet::ReluMaskedByInputAndGradient => "relu_masked_by_input_and_gradient",
            RuleSet::ReluMaskedByGradient => "relu_masked_by_gradient",
            RuleSet::Rescale => "rescale",
            RuleSet::Relevance(_) => "relevance",
            RuleSet::Pattern(_) => "pattern",
        }
    }

    /// Every rule set a caller can ask for, up to the values of its parameters (the relevance
    /// rules' epsilon and gamma change numbers, not which nodes its rules accept): what the model
    /// report dry-runs.
    pub fn families() -> Vec<RuleSet> {
        let mut all = vec![
            RuleSet::Exact,
            RuleSet::ReluMaskedByInputAndGradient,
            RuleSet::ReluMaskedByGradient,
            RuleSet::Rescale,
        ];
        all.extend(
            relevance::Composite::ALL.map(|c| RuleSet::Relevance(RelevanceRules::new(c, c.default_epsilon(), 0.25))),
        );
        all
    }
}

/// Rules by (domain, operator).
pub struct RuleTable {
    set: RuleSet,
    rules: HashMap<(&'static str, &'static str), Rule>,
    input_bounds: Option<InputBounds>,
    patterns: Option<Arc<crate::onnx::patterns::Patterns>>,
}

impl RuleTable {
    /// A table with no rules yet.
    pub(crate) fn empty(set: RuleSet) -> Self {
        RuleTable {
            set,
            rules: HashMap::new(),
            input_bounds: None,
            patterns: None,
        }
    }

    /// The exact-gradient rules.
    pub fn exact() -> Self {
        let mut t = Self::empty(RuleSet::Exact);
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

    /// The exact rules with ReLU masked by its input and its gradient.
    pub fn relu_masked_by_input_and_gradient() -> Self {
        let mut t = Self::exact();
        t.set = RuleSet::ReluMaskedByInputAndGradient;
        t.register("", "Relu", activation::relu_masked_by_input_and_gradient);
        t
    }

    /// The exact rules with ReLU masked by its gradient only.
    pub fn relu_masked_by_gradient() -> Self {
        let mut t = Self::exact();
        t.set = RuleSet::ReluMaskedByGradient;
        t.register("", "Relu", activation::relu_masked_by_gradient);
        t
    }

    /// The exact rules with the rescale rule on elementwise nonlinearities.
    pub fn rescale() -> Self {
        let mut t = Self::exact();
        t.set = RuleSet::Rescale;
        rescale::register(&mut t);
        t
    }

    /// The table for a rule set.
    pub fn for_set(set: RuleSet) -> Self {
        match set {
            RuleSet::Exact => Self::exact(),
            RuleSet::ReluMaskedByInputAndGradient => Self::relu_masked_by_input_and_gradient(),
            RuleSet::ReluMaskedByGradient => Self::relu_masked_by_gradient(),
            RuleSet::Rescale => Self::rescale(),
            RuleSet::Relevance(rules) => relevance::table(rules),
            RuleSet::Pattern(rules) => pattern::table(rules),
        }
    }

    /// Which rule set this is.
    pub fn set(&self) -> RuleSet {
        self.set
    }

    /// True when the table propagates relevance: the seed is the target's score, and batch
    /// normalisation is folded into the layer before it first.
    pub fn propagates_relevance(&self) -> bool {
        matches!(self.set, RuleSet::Relevance(_))
    }

    /// True when the backward pass starts from the target's score rather than its weight
    /// (relevance, and the pattern rules' signal).
    pub fn seeds_with_score(&self) -> bool {
        matches!(self.set, RuleSet::Relevance(_) | RuleSet::Pattern(_))
    }

    /// The same table with fitted patterns (the pattern rules read them).
    pub fn with_patterns(mut self, patterns: Option<Arc<crate::onnx::patterns::Patterns>>) -> Self {
        self.patterns = patterns;
        self
    }

    /// The fitted patterns, when given.
    pub fn patterns(&self) -> Option<&crate::onnx::patterns::Patterns> {
        self.patterns.as_deref()
    }

    /// The same table with the model input's bounds (the ZBox rule reads them).
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
