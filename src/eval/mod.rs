//! Evaluation: text metrics (BLEU-4, ROUGE, accuracy, perplexity), logits processing and
//! sampling, a batched generation loop over any causal LM, the generation [`session::Session`]
//! (model + tokenizer + template) that the `generate` / `evaluate` steps and `recipe generate` /
//! `recipe chat` share, and report writers (including a run's health warnings). The eval loss
//! itself is [`crate::model::Model::eval_loss`], the one path the trainer's eval and the
//! `evaluate` step both call.
//!
//! The metrics reproduce ChatGLM3 finetune_demo's `compute_metrics` (jieba segmentation,
//! `rouge_chinese`, nltk `sentence_bleu` with smoothing method 3); sampling reproduces the
//! logits processors of transformers' `generate`. Reference values come from
//! `tests/reference/eval_make_fixtures.py`.

pub mod bleu;
pub mod cut;
pub mod generate;
pub mod lm;
pub mod metrics;
pub mod plot;
pub mod pystr;
pub mod report;
pub mod rouge;
pub mod sampling;
pub mod session;
pub mod tfevents;

pub use bleu::bleu4;
pub use cut::cut;
pub use generate::{generate, left_pad, CausalLm, FinishReason, GenConfig, Generation, LeftPadded};
pub use metrics::{
    causal_token_accuracy, compute_generation_metrics, compute_generation_metrics_with,
    exact_match, label_accuracy, perplexity, perplexity_from_sum, token_accuracy, EmptyPairs,
    ExampleScores, GenerationMetrics,
};
pub use plot::plot_loss_curve;
pub use report::{
    example_scores_map, metrics_map, read_train_metrics, render_comparison, render_train_summary,
    write_metrics_json, write_predictions_jsonl, PredictionRecord, ReportError, TrainRecord,
};
pub use rouge::{rouge_scores, RougeScores};
pub use sampling::{Sampler, SamplingParams};
