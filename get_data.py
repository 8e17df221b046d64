"""
Check that FER-2013 is where the project looks for it ($FER_DATA, default data/fer2013),
decode it once into the cache, and print its split sizes; otherwise say where to get it.

    python get_data.py [--data PATH]
"""
import argparse
import sys

import torch

import fer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=fer.DEFAULT_DATA, help="dataset location (default: %(default)s)")
    args = parser.parse_args()
    try:
        data = fer.load_fer2013(args.data)
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    for split, name in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        counts = torch.bincount(data[split]["labels"], minlength=len(fer.EMOTIONS)).tolist()
        print(f"{split:<5} ({name:<11}) {len(data[split]['labels']):>6} images: "
              + ", ".join(f"{emotion} {count}" for emotion, count in zip(fer.EMOTIONS, counts)))
    print(f"{args.data}: FER-2013 is ready")


if __name__ == "__main__":
    main()
