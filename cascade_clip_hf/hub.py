"""Publishing a saved model folder to the Hugging Face Hub."""

import os

from huggingface_hub import HfApi


# Training leaves resumable state and interrupted saves beside the model; they do not belong on the Hub.
NOT_PUBLISHED = ["checkpoint-*", "checkpoint-*/**", ".*", ".*/**", "*.partial/**"]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload Cascade-CLIP model",
) -> str:
    """Uploads a `save_pretrained` folder (weights, config, processor, model card) in one commit; returns its URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), ignore_patterns=NOT_PUBLISHED, commit_message=commit_message
    )
    return commit.commit_url
