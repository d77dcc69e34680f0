"""rules/faces.smk: detect, align and crop the faces of each batch of videos into face stores."""
