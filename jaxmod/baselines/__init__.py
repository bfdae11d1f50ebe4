"""The paper's comparison methods on jaxmod's learner: fine-tuning, StateMask-R, RICE, JSRL and a
random-critical-state ablation, each a configuration of the same jitted refinement code."""
