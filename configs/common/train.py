"""Training-loop settings (LazyConfig), read by tools/train_net.py.

Lengths are in iterations; set ``epochs`` / ``eval_period_epochs`` /
``checkpoint_period_epochs`` to speak in epochs instead (converted with the size of the
training set and ``dataloader.train.total_batch_size``).
"""
train = dict(
    output_dir="./output/lgg",
    init_checkpoint="",
    # checkpoints load with torch.load(weights_only=True); True allows pickles (trusted files only)
    allow_unsafe_checkpoint=False,
    max_iter=6000,
    epochs=None,
    eval_period=500,
    eval_period_epochs=None,
    log_period=20,
    checkpointer=dict(period=500, max_to_keep=3),
    checkpoint_period_epochs=None,
    # the validation metric that picks model_best.pth ("lgg/<metric>", higher is better)
    best_metric="lgg/dice_volume_mean",
    # stop after this many evaluations without improvement of best_metric (0: never)
    early_stop_patience=0,
    device="auto",  # "auto": cuda when available, else cpu
    seed=0,
    # mixed precision: fp16 AMP on CUDA, bf16 autocast on CPU
    amp=dict(enabled=False),
    # clip the global L2 norm of all gradients to this value before each step (None: off)
    clip_grad_norm=None,
    # broadcast_buffers: BatchNorm statistics follow rank 0 in multi-process training
    ddp=dict(broadcast_buffers=True, find_unused_parameters=False),
    cudnn_benchmark=False,
    # warn (and repeat) when a data loader has produced no batch for this many seconds (None: off)
    data_stall_warning_seconds=300,
    # write overlay PNGs (image | truth | prediction) of the test split after training
    overlays=dict(enabled=True, max_patients=4),
)
