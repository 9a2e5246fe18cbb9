set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p $OUT/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch,transformers,peft;print(torch.__version__,transformers.__version__,peft.__version__)" | tee -a $OUT/gpu.txt
python3 -m whisper_tune.cli bench train --arch large-v2 --steps 4 --out $OUT/results --rows recipe int8-wo/8/1 int8-wo/32/1 int8-wo/32/1/compile none/8/1 none/24/0/compile 2>&1 | grep -v -i warn | grep -v "it/s\]" | tail -20
python3 -m whisper_tune.cli bench transcribe --arch large-v2 --clips 128 --out $OUT/results --rows recipe generate/32 fast/64 fast/128 2>&1 | grep -v -i warn | grep -v "it/s\]" | tail -10
