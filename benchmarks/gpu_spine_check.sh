#!/usr/bin/env bash
# GPU-machine checks of the plugin spine (run through the device tool with carry: [".whl"]; see
# shared/device/README.md). Python 3.12 / numpy 2 / pandas 3 / CUDA torch there, RecBole installed with
# --no-deps. Writes logs and a GPU-trained checkpoint under $OUT.
set -u
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/* || exit 1
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1
W=$(mktemp -d); cd "$W"
TINY="--dataset=ml-100k --hidden_size=16 --inner_size=32 --n_layers=1 --n_heads=1 --MAX_ITEM_LIST_LENGTH=20 --train_batch_size=1024 --show_progress=False"
summary() { grep -E "best valid|test result|best checkpoint|last checkpoint|Resume|Error|error" "$1" | sed 's/^/    /'; }

python3 -c "import recbole_timeplug, numpy, pandas, torch, sys; print('py', sys.version.split()[0], 'numpy', numpy.__version__, 'pandas', pandas.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'anomaly', torch.is_anomaly_enabled())"

echo "== 1. straight 3 epochs on GPU"
python3 $REPO/run_recbole.py --model=SASRec $TINY --epochs=3 > $OUT/straight.log 2>&1; summary $OUT/straight.log
echo "== 2. 1 epoch, then resume from -last to 3"
python3 $REPO/run_recbole.py --model=SASRec $TINY --epochs=1 > $OUT/first.log 2>&1
LAST=$(grep -oE "last checkpoint\s*: \S+" $OUT/first.log | awk '{print $NF}')
python3 $REPO/run_recbole.py --checkpoint_path=$LAST --epochs=3 > $OUT/resumed.log 2>&1; summary $OUT/resumed.log
BEST=$(grep -oE "best checkpoint\s*: \S+" $OUT/straight.log | awk '{print $NF}')
cp "$BEST" $OUT/gpu_sasrec_best.pth
echo "== 3. test-only of the straight run's best checkpoint on GPU"
python3 $REPO/run_recbole.py --checkpoint_path=$BEST --test_only=True > $OUT/test_only.log 2>&1; summary $OUT/test_only.log
python3 -c "import torch; p=torch.load('$BEST', weights_only=True); print('weights_only load OK:', p['format'], p['model'], 'device in config:', p['config']['device'])"
echo "== 4. DDP path (spawn + NCCL), nproc=1 world_size=1"
python3 $REPO/run_recbole.py --model=SASRec $TINY --epochs=2 --nproc=1 --world_size=1 --port=29517 > $OUT/ddp.log 2>&1; echo "rc=$?"; summary $OUT/ddp.log
echo "== 5. README main job on GPU (configs/quick_ml-100k.yaml)"
/usr/bin/time -f "wall %e s" python3 $REPO/run_recbole.py --model=SASRec --dataset=ml-100k --config_files=$REPO/configs/quick_ml-100k.yaml > $OUT/quick.log 2>&1; tail -1 $OUT/quick.log; summary $OUT/quick.log
grep -E "epoch [0-9]+ training" $OUT/quick.log | head -3
ls saved
