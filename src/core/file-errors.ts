/** The errno a file operation answers with; src/fuse maps it to fuse-native's codes. */
export type FileErrno = 'EIO' | 'ENOSPC' | 'EFBIG' | 'EROFS' | 'EINVAL';

export class FileOperationError extends Error {
  constructor(
    readonly errno: FileErrno,
    message: string,
  ) {
    super(message);
    this.name = 'FileOperationError';
  }
}
