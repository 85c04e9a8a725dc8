"""The demo's base model: a tiny Mistral with the real Mistral v3 tokenizer, pretrained on CPU in ~13 minutes.

`python -m recfound_jax.demo.pretrain --config configs/demo_base.py [--config.key=value ...]`

Stage 1, causal LM: all weights trained on the synthetic world's plain-text corpus (listings, reviews,
shopping facts, train users' histories) plus ``data.generative_rows_per_task`` generative rows per task
from the synthetic TRAIN split, written as plain text "prompt\\nanswer". Those rows teach the base the
Alpaca prompt template and the answer formats; no valid or test row is trained on. Set it to 0 for a base
that has seen the world corpus only. ``data.eval_rows_per_task`` VALID rows per task give a held-out loss
before and after training, reported in pretrain_log.json.

Stage 2, instruction (``instruct``, recfound_jax/instruct.py): all weights trained on the answer tokens of
fresh train-side rows of AP, PRP, SA and AVE in the finetuning's format (rows whose input is a valid or
test row's input are dropped), the way an instruction-tuned Mistral can compare two texts and copy a value
out of a listing before RecFound finetunes it. Without it the finetuning's attention adapters never learn
AP's or PRP's comparisons nor AVE's copying in the demo (README, "The demo's results"). The mix is
measured: AVE alone reaches 0.77 exact answers after 9,600 examples; SA's rows keep the answer letters D
and E in use (with AP and PRP only, the finetuned model's SA fell from 1.0 to 0.51).

Cost on CPU: stage 1 is dominated by the LM head over the 32768-token vocabulary (about 25 MFLOP per token
for forward and backward at hidden 128), so ``seq_len * batch_size`` stays near 1k tokens a step; stage 2
applies the LM head at the answer tokens only (433 a batch: 9 AVE answers of up to 43 tokens, 23 one-letter
answers with EOS). Measured with this config on the idle 2-core CPU machine: 9.11M parameters, 263k corpus
tokens (~2 epochs in 500 steps of 1,024 tokens), training loss 10.42 -> 0.35, held-out loss 10.43 -> 0.33
in 200 s (0.40 s a step); then the instruction stage, 800 steps of 32 rows (593 s, 0.74 s a step), valid
answer accuracy (every answer token right, as greedy decoding needs) AP 0.07 -> 0.83, PRP 0.00 -> 1.00,
SA 0.07 -> 1.00, AVE 0.00 -> 0.87.
"""
from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    """The demo base-model recipe."""
    config = ConfigDict()

    config.model = ConfigDict()
    config.model.vocab_size = 32768  # Mistral v3 SentencePiece
    config.model.hidden_size = 128
    config.model.intermediate_size = 344
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 32
    config.model.rms_norm_eps = 1e-5
    config.model.rope_theta = 1e4
    config.model.max_position_embeddings = 192

    config.data = ConfigDict()
    config.data.scale = 1  # synthetic world size (recfound_jax.demo.synthetic)
    config.data.seed = 0
    config.data.generative_rows_per_task = 200  # train-split rows per generative task; 0 = none, -1 = all
    config.data.eval_rows_per_task = 4  # valid-split rows per generative task for a held-out loss; 0 = none

    config.train = ConfigDict()
    config.train.seq_len = 128  # documents are packed into windows of seq_len + 1 tokens
    config.train.batch_size = 8
    config.train.steps = 500
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 25
    config.train.decay = "cosine"  # "cosine" or "linear", from the peak down to end_lr_fraction * peak
    config.train.end_lr_fraction = 0.1
    config.train.weight_decay = 0.01  # matrices only, not norms
    config.train.grad_clip = 1.0
    config.train.seed = 0
    config.train.log_every = 10

    # The instruction stage (recfound_jax.demo.instruct): after the causal-LM stage, every weight trained on the
    # answer tokens of fresh train-side rows of these tasks, as an LLM's instruction tuning would. The
    # finetuning's attention adapters alone learn neither AP's and PRP's comparisons nor AVE's copying in the demo.
    config.instruct = ConfigDict()
    # rows per task (generative tasks' short names), in these proportions in every batch; {} turns it off
    config.instruct.rows = {"AP": 3000, "PRP": 12000, "SA": 1500, "AVE": 6000}
    config.instruct.steps = 800
    config.instruct.batch_size = 32
    config.instruct.learning_rate = 1e-3
    config.instruct.warmup_steps = 20
    config.instruct.decay = "cosine"
    config.instruct.end_lr_fraction = 0.1
    config.instruct.weight_decay = 0.01
    config.instruct.grad_clip = 1.0
    config.instruct.seed = 0
    config.instruct.log_every = 10

    # Empty: the cached base of ensure_base ($RECFOUND_CACHE or ~/.cache/recfound_jax).
    config.output_dir = ""
    return config
