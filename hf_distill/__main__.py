"""`python -m hf_distill ...` and `accelerate launch -m hf_distill train CONFIG.yaml`."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
