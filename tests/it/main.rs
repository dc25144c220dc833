//! The black-box tests, one binary: a real server on loopback, real models, real processes.
//! One binary rather than one per file, so a change to the library links the tests once.
//! Every module runs in this one process: what a test reads of the process (its peak memory,
//! its open-file limit, the ONNX Runtime environment) is shared with the tests beside it.

mod common;

mod actmax;
mod anchors;
mod api;
mod attention;
mod audit;
mod autodiff_models;
mod autodiff_rules;
mod batching;
mod cam_layout;
mod channels;
mod concepts;
mod contract;
mod cost;
mod counterfactual;
mod deeplift;
mod deploy;
mod detection;
mod eval;
mod explain;
mod explained_inputs;
mod external_data;
mod extremal;
mod gradients_runtime;
mod inputs;
mod jobs;
mod ledger;
mod limits;
mod lrp;
mod model_memory;
mod onnx_corpus;
mod overload;
mod patterns;
mod post_nms_detector;
mod protocols;
mod real_detector;
mod real_models;
mod reference;
mod refusals;
mod region_targets;
mod registry;
mod replay;
mod replicas;
mod sampled_shapley;
mod security;
mod segmentation;
mod text;
mod text_inputs;
mod tree_shap;
mod uncertainty;
mod vertex;
mod web;
mod wide;
mod xrai;
