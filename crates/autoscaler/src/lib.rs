//! The autoscaling agent of inferlb: it makes Application Auto Scaling match
//! a declared file for SageMaker endpoint variants and inference components,
//! the way `terraform plan` / `apply` would, with local validation first and
//! only declared resources touched.
//!
//! # Layout
//!
//! - [`model`]: the declared file: targets, target-tracking and step-scaling
//!   policies, scheduled actions, the scale-to-zero recipe.
//! - [`validate`]: every local rule, each problem naming its field.
//! - [`plan`]: current state in, ordered changes out (pure).
//! - [`aws`]: reading state and making calls through the AWS SDK.
//! - [`retry`]: which Application Auto Scaling errors are retried.
//! - [`agent`]: plan, apply, destroy, status, run.
//! - [`aas`]: a pure model of how Application Auto Scaling decides capacity
//!   (the engine of `simulate` and of local autoscaling).
//! - [`simulate`]: a load trace replayed through the engine.
//! - [`local`]: the local scaler's decisions on the engine (pools whose
//!   replicas inferlb starts itself), a pure state machine.
//! - [`publish`]: the proxy's concurrency, published to CloudWatch.

#![forbid(unsafe_code)]

pub mod aas;
pub mod agent;
pub mod aws;
pub mod local;
pub mod model;
pub mod plan;
pub mod publish;
pub mod retry;
pub mod simulate;
pub mod validate;

pub use agent::{hold_path, read_hold, Agent, AgentError, Outcome, TargetStatus};
pub use aws::{Aws, AwsError, AwsOptions};
pub use model::AutoscalingFile;
pub use plan::{render, Plan, PlanOptions};
pub use validate::{validate, Invalid, Problem};
