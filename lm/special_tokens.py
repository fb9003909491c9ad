"""The special tokens lm's tasks rely on; `tokenizer.special_tokens` must include all four.

Their ids follow their order in `tokenizer.special_tokens` (default: SPECIAL_TOKENS), after the 256 bytes
and the merges. This module imports nothing, so the config, the tokenizer, the data and the inference code
can all name the tokens through it.
"""

EOT = "<|endoftext|>"  # ends every document of the packed clm / mlm streams
PAD = "<|pad|>"  # right-pads classify rows; never attended to
CLS = "<|cls|>"  # starts every classify row and every mlm window; the classifier pools it
MASK = "<|mask|>"  # mlm: a token to predict; classify: token dropout

SPECIAL_TOKENS = (EOT, PAD, CLS, MASK)
