//! Other serving platforms' request and response shapes, one file per protocol, over explaind's
//! own pipeline: each adapter parses its protocol's body into the inputs and options explaind's
//! handlers validate (the same limits, the same queue, the same audit), and writes the answer and
//! the errors in that protocol's shape. They never validate or run anything themselves.

pub mod vertex;
