"""A custom hand in a few lines: brainhands serve hand examples.word_count --port 50071"""

from hands import hand, serve


@hand(description="Count the words in a text.", idempotent=True)
async def word_count(text: str) -> str:
    return str(len(text.split()))


if __name__ == "__main__":
    serve([word_count], port=50071)
