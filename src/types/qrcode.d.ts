// The one function of the qrcode library this server calls. Declared here rather than through
// @types/qrcode, whose declarations need the DOM library (canvas types) in a Node-only project.
declare module 'qrcode' {
  interface ToStringOptions {
    type: 'svg' | 'utf8' | 'terminal'
    errorCorrectionLevel?: 'L' | 'M' | 'Q' | 'H'
    /** Quiet zone, in modules. */
    margin?: number
  }
  const QRCode: {
    /** The QR code of `text` as an SVG document (type 'svg'). */
    toString(text: string, options: ToStringOptions): Promise<string>
  }
  export default QRCode
}
