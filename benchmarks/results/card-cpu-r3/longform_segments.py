"""Where the long-form words go: the CPU card's long file of the unseen split, decoded by an
adapter as the card decodes it (greedy, time stamps, language forced).

    python longform_segments.py CORPUS/mr RUN/adapter BASE > longform-segments.txt
"""

import sys

from whisper_tune.card_sets import standard_sets
from whisper_tune.config import DataConfig
from whisper_tune.grading import CardSize, _first_seconds, held_out
from whisper_tune.inference import DecodingOptions, open_engine
from whisper_tune.prepare import prepare_split

corpus, adapter, base = sys.argv[1], sys.argv[2], sys.argv[3]
data = DataConfig(source=corpus, train_split="train", eval_split="unseen")
prepared = prepare_split(data, "unseen", "/tmp/longform-segments/prepared", base, progress=False)
target = held_out(prepared)
size = CardSize.for_cpu()
source = _first_seconds(target, size.target, size.longform_seconds)
sets = standard_sets("mr", target, nonspeech=0, longform_seconds=size.longform_seconds, longform_from=source)
long_file = sets.longform[0]
engine = open_engine(None, adapter, language="mr", decoding=DecodingOptions.greedy())
((segments, _),) = engine.transcribe([long_file.audio], language="mr")
print("file seconds", long_file.seconds, "clips", len(long_file.spans))
for s in segments:
    print(f"{s.start:7.2f} {s.end:7.2f} {s.text[:70]}")
print("--- reference spans")
for start, end in long_file.spans:
    print(f"{start:7.2f} {end:7.2f}")
