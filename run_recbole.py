"""Train / resume / evaluate any plugin or RecBole model, with RecBole's flags and --key=value overrides.

    python run_recbole.py --model=TiM4Rec --dataset=ml-100k
    python run_recbole.py --model=SASRec --dataset=ml-100k --epochs=5 --hidden_size=64
    python run_recbole.py --model=SASRec --dataset=ml-100k --checkpoint_path=saved/X-last.pth --epochs=10
    python run_recbole.py --checkpoint_path=saved/X.pth --test_only=True
    python run_recbole.py --model=SASRec --dataset=ml-1m --nproc=2 --gpu_id=0,1
"""

import argparse
import sys

from recbole_timeplug.errors import TimeplugError
from recbole_timeplug.quick_start import run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default=None, help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", type=str, default=None, help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated config files")
    parser.add_argument("--nproc", type=int, default=1, help="number of processes (GPUs) for DDP")
    parser.add_argument("--ip", type=str, default="localhost", help="the ip of master node")
    parser.add_argument("--port", type=str, default="5678", help="the port of master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="the global rank offset of this group")
    args, _ = parser.parse_known_args(argv)  # the rest are --key=value config overrides (read by Config)

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    result = run(
        args.model,
        args.dataset,
        config_file_list=config_file_list,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )
    return result


if __name__ == "__main__":
    try:
        main()
    except TimeplugError as err:  # bad input: say what is wrong and what to do, without a traceback
        print(f"run_recbole.py: error: {err}", file=sys.stderr)
        sys.exit(2)
