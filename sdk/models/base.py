"""What every chat backend offers: `generate` over many conversations, in chunks, with a progress bar."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from sdk.config import GenerationSettings
from sdk.progress import progress_bar

Messages = list[dict]
ChunkCallback = Callable[[int, list], None]


class ChatBackend:
    name: str
    settings: GenerationSettings

    def _generate_chunk(self, conversations: Sequence[Messages], settings: GenerationSettings) -> list:
        """Answer one chunk. Returns a str per conversation, or an Exception where one failed."""
        raise NotImplementedError

    def chunk_size(self, settings: GenerationSettings) -> int:
        return settings.batch_size

    def generate(
        self,
        conversations: Sequence[Messages],
        settings: Optional[GenerationSettings] = None,
        description: str = "generating",
        on_chunk: Optional[ChunkCallback] = None,
        return_errors: bool = False,
    ) -> list:
        """Answer every conversation.

        on_chunk(start, outputs) is called after each chunk, so a caller can journal finished rows.
        With return_errors=True a failed row comes back as its Exception instead of raising.
        """
        settings = settings or self.settings
        conversations = list(conversations)
        step = self.chunk_size(settings)
        results: list = []
        with progress_bar(f"{description} ({self.name})", len(conversations)) as advance:
            for start in range(0, len(conversations), step):
                outputs = self._generate_chunk(conversations[start : start + step], settings)
                if not return_errors:
                    for out in outputs:
                        if isinstance(out, BaseException):
                            raise out
                if on_chunk is not None:
                    on_chunk(start, outputs)
                results.extend(outputs)
                advance(len(outputs))
        return results

    def generate_journaled(
        self,
        keys: Sequence[str],
        conversations: Sequence[Messages],
        journal,
        to_row: Callable[[int, object], dict],
        description: str = "generating",
    ) -> None:
        """Answer the conversations whose key is not yet in `journal` (an sdk.store.Journal).

        After each chunk, `to_row(index, output)` of every answered conversation is appended to the
        journal (output is the reply, or its Exception), so a resumed caller pays only for the rest.
        """
        todo = [i for i, key in enumerate(keys) if key not in journal.done]
        if not todo:
            return

        def record(start: int, outputs: list) -> None:
            journal.append([to_row(i, out) for i, out in zip(todo[start : start + len(outputs)], outputs)])

        self.generate([conversations[i] for i in todo], description=description, on_chunk=record, return_errors=True)
