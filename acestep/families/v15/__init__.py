"""ACE-Step 1.5 (2B turbo/base/sft, XL 4B) on diffusers' own classes."""
