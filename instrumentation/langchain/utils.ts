/** The object on `proto`'s chain that defines `key` itself (where a patch has to go). */
export function ownerOf(proto: object | null, key: string): object | undefined {
  for (let p = proto; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
    if (Object.prototype.hasOwnProperty.call(p, key)) return p;
  }
  return undefined;
}
