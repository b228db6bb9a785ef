"""``bizra-voice gpu-check``: how many real-time sessions this machine holds, and whether the engine is correct
here, in one unattended command.

It builds PersonaPlex at full (or tiny) dimensions with random weights (speed does not depend on the
weights' values), then checks CUDA graphs against eager greedy tokens, times the batched tick per batch size,
measures memory per slot and the handshake prefill, and drives N sessions through the real
``EngineRuntime`` tick thread at the chosen capacity and 25 % above it. ``--memory-gb N`` runs the laptop
profile's engine settings under an N GiB allocator cap next to the memory its Qwen and Whisper take.

Nothing here imports Ray, FastAPI or uvicorn: the check runs on a bare GPU machine with a few carried wheels
(``scripts/gpu_wheels.sh``). Importing this package imports nothing heavy.
"""
